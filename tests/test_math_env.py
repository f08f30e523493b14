"""``ptgym/Math-v0``: Gymnasium contract, determinism, rewards, multi-turn feedback, splits."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from ptgym.envs.math import DEFAULT_SYSTEM_PROMPT, NO_ANSWER, TRY_AGAIN, MathEnv
from ptgym.types import Action

# Two-term one-digit sums: a small problem space, so splits and hints are easy to reason about.
SMALL_SUMS = {
    "basic_arithmetic": {
        "min_terms": 2,
        "max_terms": 2,
        "min_digits": 1,
        "max_digits": 1,
        "operators": ["+"],
        "allow_parentheses": False,
        "allow_negation": False,
    }
}


def sums_env(**kwargs) -> MathEnv:
    return MathEnv(generators=["basic_arithmetic"], generator_config=SMALL_SUMS, **kwargs)


@pytest.mark.filterwarnings("ignore:.*(spec|render fps).*")
@pytest.mark.parametrize(
    "kwargs", [{}, {"max_attempts": 3, "hints": True, "format_reward": 0.1, "render_mode": "ansi"}]
)
def test_passes_gymnasium_env_checker(kwargs: dict) -> None:
    check_env(MathEnv(**kwargs))


def test_reset_gives_system_and_question_with_gold_in_info() -> None:
    obs, info = MathEnv().reset(seed=0)
    # pinned: numpy's PCG64 picks the generator and index; reasoning-gym 0.1.25 the problem
    assert info == {"task_id": "chain_sum/5111", "answer": "-5", "tools": [], "split": "train"}
    assert obs == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {
            "role": "user",
            "content": "State the final answer to the following arithmetic problem: 1 - 4 - 2 =",
        },
    ]


def test_same_seed_gives_same_problems_and_rewards() -> None:
    def episode_log(env: MathEnv) -> list:
        log = []
        for seed in range(30):
            obs, info = env.reset(seed=seed)
            reply = f"\\boxed{{{info['answer']}}}" if seed % 2 else "Answer: 0.123"
            log.append((obs, info, env.step(reply)))
        return log

    first, second = episode_log(MathEnv()), episode_log(MathEnv())
    assert first == second
    assert len({info["task_id"] for _, info, _ in first}) == 30
    assert [r for _, _, (_, r, *_) in first] == [0.0, 1.0] * 15
    generators = {info["task_id"].split("/")[0] for _, info, _ in first}
    assert generators == {"basic_arithmetic", "chain_sum", "gsm_symbolic"}


def test_options_pick_a_task_by_id_or_index() -> None:
    env = MathEnv()
    _, by_id = env.reset(options={"task_id": "gsm_symbolic/17"})
    assert by_id["task_id"] == "gsm_symbolic/17"
    assert env.num_tasks == 30_000
    assert env.reset(options={"index": 0})[1]["task_id"] == "basic_arithmetic/0"
    assert env.reset(options={"index": 10_001})[1]["task_id"] == "chain_sum/1"
    with pytest.raises(ValueError, match="expected e.g. 'basic_arithmetic/0'"):
        env.reset(options={"task_id": "gsm_symbolic/test/17"})
    with pytest.raises(ValueError, match="index must be in"):
        env.reset(options={"index": 30_000})


def test_correct_answer_scores_one_and_wrong_answer_zero() -> None:
    env = MathEnv()
    _, info = env.reset(seed=4)
    assert env.step(Action(text=f"So the total is {info['answer']}.")) == (
        [],
        1.0,
        True,
        False,
        {
            "task_id": info["task_id"],
            "answer": info["answer"],
            "correct": True,
            "extracted": info["answer"],
            "attempt": 1,
        },
    )
    env.reset(seed=4)
    obs, reward, terminated, truncated, step_info = env.step("I am not sure.")
    assert (obs, reward, terminated, truncated) == ([], 0.0, True, False)
    assert (step_info["correct"], step_info["extracted"]) == (False, None)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("5")


def test_format_reward_is_paid_for_a_parseable_answer_even_if_wrong() -> None:
    env = MathEnv(format_reward=0.1)
    _, info = env.reset(seed=0)
    assert env.step("\\boxed{123456}")[1] == 0.1
    env.reset(seed=0)
    assert env.step("no idea")[1] == 0.0
    env.reset(seed=0)
    assert env.step(f"\\boxed{{{info['answer']}}}")[1] == pytest.approx(1.1)


def test_multi_turn_feedback_hints_and_discounted_final_reward() -> None:
    env = sums_env(max_attempts=4, hints=True, attempt_discount=0.5)
    _, info = env.reset(options={"task_id": "basic_arithmetic/0"})
    gold = int(info["answer"])
    assert env.step(f"Answer: {gold + 5}")[:4] == (
        [{"role": "user", "content": f"{TRY_AGAIN} The answer is lower than {gold + 5}."}],
        0.0,
        False,
        False,
    )
    assert env.step(f"Answer: {gold - 5}")[0][0]["content"] == (
        f"{TRY_AGAIN} The answer is higher than {gold - 5}."
    )
    assert env.step("hmm")[0] == [{"role": "user", "content": NO_ANSWER}]
    obs, reward, terminated, _, step_info = env.step(f"\\boxed{{{gold}}}")
    assert (obs, reward, terminated, step_info["attempt"]) == ([], 0.5**3, True, 4)
    env.reset(options={"task_id": "basic_arithmetic/0"})
    assert env.step(f"\\boxed{{{gold}}}")[1:3] == (1.0, True)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(f"\\boxed{{{gold}}}")  # solved at attempt 1 of 4: the episode is over


def test_multi_turn_without_hints_says_try_again_and_ends_after_k_attempts() -> None:
    env = sums_env(max_attempts=2)
    env.reset(seed=1)
    assert env.step("Answer: 100")[0] == [{"role": "user", "content": TRY_AGAIN}]
    assert env.step("Answer: 100")[1:3] == (0.0, True)


def test_test_split_never_repeats_a_train_question() -> None:
    train, test = sums_env(dataset_size=200), sums_env(dataset_size=200, split="test")
    train_questions = {
        train.reset(options={"index": i})[0][-1]["content"] for i in range(train.num_tasks)
    }
    test_questions = set()
    for i in range(test.num_tasks):
        obs, info = test.reset(options={"index": i})
        assert info["task_id"].startswith("basic_arithmetic/test/")
        test_questions.add(obs[-1]["content"])
    # ~100 possible sums: 200 train draws cover most, so most test draws are dropped
    assert not train_questions & test_questions
    assert 0 < test.num_tasks < 50


def test_a_small_train_set_holds_out_every_other_problem_once_and_seeds_sweep_it() -> None:
    """``test_size`` draws the test split apart from ``dataset_size``; repeats are dropped, and
    consecutive seeds (what ``ptgym eval tasks=N`` uses) give distinct held-out problems."""
    train = sums_env(dataset_size=20)
    test = sums_env(dataset_size=20, test_size=3000, split="test")
    train_questions = {
        train.reset(options={"index": i})[0][-1]["content"] for i in range(train.num_tasks)
    }
    swept = [test.reset(seed=1_000_000 + i)[0][-1]["content"] for i in range(test.num_tasks)]
    everything = {test.reset(options={"index": i})[0][-1]["content"] for i in range(test.num_tasks)}
    # 121 sums (this generator's "one digit" runs 0..10): 3000 draws find every untrained one
    assert len(swept) == len(set(swept)) == 121 - len(train_questions)
    assert set(swept) == everything and not everything & train_questions
    assert test.reset(seed=7)[0] == test.reset(seed=7 + test.num_tasks)[0]  # the sweep wraps
    assert sums_env(test_size=3000).num_tasks == 10_000  # the train split ignores test_size
    with pytest.raises(ValueError, match="test_size"):
        sums_env(test_size=0)


def test_difficulty_and_generator_config_shape_the_problems() -> None:
    question = sums_env().reset(seed=0)[0][-1]["content"]
    assert question.startswith("Calculate ") and " + " in question
    easiest = MathEnv(generators=["chain_sum"], difficulty=0)
    terms = easiest.reset(seed=0)[0][-1]["content"].split(":")[1].strip(" =").split()
    assert len(terms) == 3 and all(len(t) <= 2 for t in terms)  # "a op b", 1-digit numbers


def test_bad_configuration_names_the_fix() -> None:
    with pytest.raises(ValueError, match="did you mean basic_arithmetic"):
        MathEnv(generators=["basic_arithmetc"])
    with pytest.raises(ValueError, match="unknown fields \\['max_digit'\\]"):
        MathEnv(generator_config={"basic_arithmetic": {"max_digit": 2}})
    with pytest.raises(ValueError, match="split must be"):
        MathEnv(split="eval")


def test_weights_mix_generators_in_proportion() -> None:
    env = MathEnv(generators={"chain_sum": 3.0, "basic_arithmetic": 1.0})
    env.reset(seed=0)
    names = [env.reset()[1]["task_id"].split("/")[0] for _ in range(400)]
    assert np.mean([n == "chain_sum" for n in names]) == pytest.approx(0.75, abs=0.06)


def test_step_from_a_worker_thread_checks_answers() -> None:
    """The rollout collector steps envs in a thread pool (math-verify's signals must not fire)."""
    env = MathEnv()
    _, info = env.reset(seed=0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        _, reward, _, _, step_info = pool.submit(env.step, f"\\boxed{{{info['answer']}}}").result()
    assert (reward, step_info["correct"]) == (1.0, True)


def test_ansi_render_shows_the_conversation() -> None:
    env = sums_env(render_mode="ansi", system_prompt=None, max_attempts=2)
    env.reset(options={"task_id": "basic_arithmetic/0"})
    env.step("Answer: 100")
    question = env.messages[0]["content"]
    assert env.render() == f"[user] {question}\n[assistant] Answer: 100\n[user] {TRY_AGAIN}"
