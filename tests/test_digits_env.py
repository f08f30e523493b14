"""``ptgym/Digits-v0``: the trainer's learning target, (a + b) mod 10 checked on the first char."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from ptgym.envs.digits import TRY_AGAIN, DigitsEnv
from ptgym.types import Action


@pytest.mark.filterwarnings("ignore:.*(spec|render fps).*")
@pytest.mark.parametrize("kwargs", [{}, {"max_attempts": 3, "render_mode": "ansi"}])
def test_passes_gymnasium_env_checker(kwargs: dict) -> None:
    check_env(DigitsEnv(**kwargs))


def test_reset_is_seeded_and_asks_for_one_digit() -> None:
    obs, info = DigitsEnv().reset(seed=3)
    assert obs == [
        {"role": "user", "content": "Compute (8 + 0) mod 10. Answer with a single digit."}
    ]
    assert info == {"task_id": "8+0", "answer": "8", "tools": []}
    tasks = [DigitsEnv().reset(seed=s)[1]["task_id"] for s in range(20)]
    assert tasks == [DigitsEnv().reset(seed=s)[1]["task_id"] for s in range(20)]
    assert len(set(tasks)) > 10


@pytest.mark.parametrize(
    ("reply", "reward"),
    [("1", 1.0), (" 1", 1.0), ("\n1.", 1.0), ("1 because 7+4=11", 1.0), ("11", 1.0)]
    + [("The answer is 1", 0.0), ("", 0.0), ("   ", 0.0), ("2", 0.0), ("one", 0.0)],
)
def test_reward_is_the_first_non_space_character(reply: str, reward: float) -> None:
    env = DigitsEnv()
    env.reset(options={"task_id": "7+4"})
    obs, r, terminated, truncated, info = env.step(Action(text=reply))
    assert (obs, r, terminated, truncated) == ([], reward, True, False)
    assert info["extracted"] == (reply.strip()[:1] or None)


def test_options_index_covers_all_hundred_tasks() -> None:
    env = DigitsEnv()
    answers = [env.reset(options={"index": i})[1]["answer"] for i in range(env.num_tasks)]
    assert answers == [str((a + b) % 10) for a in range(10) for b in range(10)]
    with pytest.raises(ValueError, match="task_id must look like"):
        env.reset(options={"task_id": "12+3"})


def test_multi_turn_says_wrong_then_pays_the_discounted_reward() -> None:
    env = DigitsEnv(max_attempts=3, attempt_discount=0.5)
    env.reset(options={"task_id": "9+9"})
    assert env.step("7")[:3] == ([{"role": "user", "content": TRY_AGAIN}], 0.0, False)
    assert env.step("8")[1:3] == (0.5, True)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("8")


def test_a_random_digit_earns_about_one_tenth() -> None:
    env, rng = DigitsEnv(), np.random.default_rng(0)
    rewards = []
    for seed in range(2000):
        env.reset(seed=seed)
        rewards.append(env.step(str(rng.integers(10)))[1])
    assert np.mean(rewards) == pytest.approx(0.1, abs=0.02)
