"""``ptgym/Chat-v0``: prompts from the shipped set, JSONL and ``datasets``; held-out splits; a
rollout scored by a real reward model whose chat template is not the policy's."""

from __future__ import annotations

import json

import datasets
import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import ptgym
from ptgym.advantages import select_trainable
from ptgym.agents.chat import ChatRenderer
from ptgym.cli import main
from ptgym.envs.chat import DEFAULT_PROMPTS, ChatEnv, load_prompts
from ptgym.envs.rewards import RewardModel
from ptgym.store import TrajectoryStore
from tests.test_rewards import make_rm
from tests.tiny import tiny_tokenizer

RM_TEMPLATE = "{% for m in messages %}### {{ m['role'] }}\n{{ m['content'] }}\n\n{% endfor %}"


def test_the_env_passes_gymnasiums_checker_and_is_registered():
    check_env(ChatEnv(), skip_render_check=True)
    env = gymnasium.make("ptgym/Chat-v0")
    obs, info = env.reset(seed=0)
    assert obs[-1]["role"] == "user" and info["task_id"].startswith("chat/")
    assert ptgym.make("chat").spec.id == "ptgym/Chat-v0"
    _, reward, terminated, truncated, info = env.step("A reply.")
    assert (reward, terminated, truncated, info["scored"]) == (0.0, True, False, False)


def test_the_shipped_prompts_are_many_varied_and_split_without_overlap():
    rows = [json.loads(line) for line in DEFAULT_PROMPTS.read_text().splitlines()]
    assert len(rows) >= 200 and len({r["prompt"] for r in rows}) == len(rows)
    assert len({r["category"] for r in rows}) >= 6
    train, test = ChatEnv(split="train"), ChatEnv(split="test")
    assert train.num_tasks + test.num_tasks == len(rows)
    assert 10 <= test.num_tasks <= 40  # about 10%
    assert not set(train.ids) & set(test.ids)
    texts = {json.dumps(p) for p in test.prompts}
    assert not texts & {json.dumps(p) for p in train.prompts}


def test_reset_is_seeded_and_options_pick_a_prompt():
    env = ChatEnv()
    assert env.reset(seed=5)[0] == env.reset(seed=5)[0]
    obs, info = env.reset(options={"index": 3})
    assert obs == env.prompts[3] and info["task_id"] == f"chat/{env.ids[3]}"
    assert env.reset(options={"task_id": info["task_id"]})[0] == obs
    with pytest.raises(ValueError, match="not a train prompt"):
        env.reset(options={"task_id": "chat/99999"})
    sys_env = ChatEnv(system_prompt="Be kind.")
    assert sys_env.reset(options={"index": 0})[0][0] == {"role": "system", "content": "Be kind."}


def test_prompts_from_jsonl_in_every_layout(tmp_path):
    path = tmp_path / "p.jsonl"
    records = [
        {"prompt": "Plain text prompt"},
        {"prompt": [{"role": "user", "content": "As messages"}]},
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "From an SFT record"},
                {"role": "assistant", "content": "dropped"},
            ]
        },
        {"question": "A question column"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    prompts = load_prompts(str(path))
    assert prompts[0] == [{"role": "user", "content": "Plain text prompt"}]
    assert prompts[2] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "From an SFT record"},
    ]
    assert prompts[3][0]["content"] == "A question column"
    env = ChatEnv(prompts=str(path), test_fraction=0.0)
    assert env.num_tasks == 4
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="prompt_column"):
        load_prompts(str(path))
    with pytest.raises(FileNotFoundError, match="jsonl"):
        load_prompts(str(tmp_path / "missing.jsonl"))


def test_prompts_from_a_datasets_dataset_and_a_saved_folder(tmp_path):
    ds = datasets.Dataset.from_dict({"instruction": [f"Task number {i}" for i in range(30)]})
    env = ChatEnv(prompts=ds, split="train")
    held_out = ChatEnv(prompts=ds, split="test")
    assert env.num_tasks + held_out.num_tasks == 30 and held_out.num_tasks > 0
    ds.save_to_disk(str(tmp_path / "ds"))
    from_disk = ChatEnv(prompts=str(tmp_path / "ds"), prompt_column="instruction")
    assert from_disk.prompts == env.prompts
    with pytest.raises(ValueError, match="split of the chat prompts is empty"):
        ChatEnv(prompts=["only one"], split="test", test_fraction=0.01)


@pytest.fixture(scope="module")
def other_template_rm(tmp_path_factory):
    return make_rm(tmp_path_factory.mktemp("rm") / "rm", template=RM_TEMPLATE, seed=1)


def rollout(tmp_path, reward: str, name: str = "run") -> list:
    out = tmp_path / name
    code = main(
        [
            "rollout",
            "env=chat",
            f"reward={reward}",
            "env.kwargs.normalize=false",
            "model=tiny",
            "model.device=cpu",
            "tasks=3",
            "group=2",
            "sampling.max_new_tokens=6",
            f"out={out}",
        ]
    )
    assert code == 0
    return list(TrajectoryStore(out))


def test_a_rollout_is_scored_on_the_rms_own_rendering_not_the_policys_ids(
    tmp_path, other_template_rm
):
    trajs = rollout(tmp_path, f"rm:{other_template_rm}")
    rm = RewardModel(other_template_rm, device="cpu")
    policy = ChatRenderer(tiny_tokenizer())
    assert len(trajs) == 6 and all(t.error is None for t in trajs)
    for t in trajs:
        text = rm.tokenizer.decode(rm.render(t.messages))
        assert text.startswith("### ") and "<|im_start|>" not in text  # the RM's template
        expected = rm.score_ids([rm.render(t.messages)])[0]
        assert t.metrics["score/rm"] == pytest.approx(expected, abs=1e-4)
        assert t.reward == pytest.approx(expected, abs=1e-4)  # normalize=false: the raw score
        turn = t.turns[0]
        policy_ids = [*turn.prompt_ids.tolist(), *turn.completion_ids.tolist()]
        assert policy.decode(turn.prompt_ids).startswith("<|im_start|>")
        assert rm.score_ids([policy_ids])[0] != pytest.approx(expected, abs=1e-3)


def test_a_failing_scorer_marks_the_episode_error_instead_of_scoring_it(tmp_path):
    nan_rm = make_rm(tmp_path / "nan-rm", nan=True)
    trajs = rollout(tmp_path, f"rm:{nan_rm}")
    assert len(trajs) == 6
    assert all(t.error and "rm gave nan" in t.error for t in trajs)
    assert all(t.reward == 0.0 and "score/rm" not in t.metrics for t in trajs)
    keep = select_trainable(
        [t.reward for t in trajs],
        [t.group_id for t in trajs],
        errors=[bool(t.error) for t in trajs],
    )
    assert not keep.any()  # the trainer drops every one of them


def test_scores_of_one_source_are_normalised_by_its_running_stats(tmp_path, other_template_rm):
    env = ChatEnv(reward=f"rm:{other_template_rm}", normalize=True, device="cpu")
    raw, rewards = [], []
    for i in range(4):
        env.reset(options={"index": i})
        _, r, _, _, info = env.step("Reply " * (i + 1))
        raw.append(info["score/rm"])
        rewards.append(r)
    # Each reward is normalised by the statistics of every score so far (hand formula).
    for n in range(1, 5):
        mean, std = np.mean(raw[:n]), np.std(raw[:n])
        assert rewards[n - 1] == pytest.approx((raw[n - 1] - mean) / (std + 1e-6), abs=1e-3)
    torch.testing.assert_close(rewards[0], 0.0)


def test_an_ensemble_spec_takes_the_min_of_each_sources_normalised_score(tmp_path):
    a, b = make_rm(tmp_path / "a", seed=2), make_rm(tmp_path / "b", seed=3)
    env = ChatEnv(reward=f"min(rm:{a}, rm:{b})", device="cpu")
    raw: dict[str, list[float]] = {"rm.0": [], "rm.1": []}
    for i, reply in enumerate(["Yes.", "A longer reply than that.", "No", "Maybe, maybe not."]):
        env.reset(options={"index": i})
        _, reward, _, _, info = env.step(reply)
        z = {}
        for name in raw:  # each source normalised by its own running statistics
            raw[name].append(info[f"score/{name}"])
            xs = np.array(raw[name])
            z[name] = (xs[-1] - xs.mean()) / (xs.std() + 1e-6)
        assert reward == pytest.approx(min(z.values()), abs=1e-3)
    assert raw["rm.0"] != raw["rm.1"]  # two different models


def test_followups_make_a_multi_turn_episode_scored_once_at_the_end():
    from ptgym.envs.rewards import Reward
    from tests.test_rewards import WordCount

    env = ChatEnv(reward=Reward([WordCount()], normalize=False), followups=["Shorter, please."])
    obs, _ = env.reset(options={"index": 0})
    obs, reward, terminated, _, info = env.step("one two three four")
    assert obs == [{"role": "user", "content": "Shorter, please."}]
    assert (reward, terminated, info["turn"]) == (0.0, False, 1)
    obs, reward, terminated, _, info = env.step("one two")
    assert (obs, reward, terminated, info["score/words"]) == ([], 2.0, True, 2.0)
    assert [m["role"] for m in env.messages] == ["user", "assistant", "user", "assistant"]
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("again")
