"""``ptgym/Math-v0``: procedurally generated math problems with a verifiable 1/0 reward.

## Description

Each episode is one problem from reasoning-gym's procedural generators (Stojanovski et al.,
"Reasoning Gym", 2025), seeded and deterministic. The model answers in free text; the final
answer is extracted and checked with math-verify (rules and precedence in
``ptgym.envs.answer``). With ``max_attempts=K > 1`` the env says "That is not correct. Try
again." after a wrong answer (optionally with a higher/lower hint), so multi-turn training has a
simple, real target: use the feedback to fix the answer.

Problems: ``generators`` picks reasoning-gym datasets and their mixing weights (default: equal
parts ``basic_arithmetic``, ``chain_sum`` and the GSM8K-style word problems ``gsm_symbolic``).
Each generator holds ``dataset_size`` problems; problem ``i`` is a pure function of
(generator, config, seed, i), so a dataset is built once per process (cached) and items are
made on demand (~30 us each). ``reset(seed=s)`` draws the generator and the item from
``self.np_random``, so the same seed gives the same problem. Splits: ``train`` uses reasoning-gym
seed ``dataset_seed``, ``test`` uses ``dataset_seed + 2**31``; reasoning-gym seeds item ``i``
with ``seed + i``, so the two never share an item seed, and the test split also drops every
problem whose question text occurs in the train split (small problem spaces repeat), and every
repeat of a question within itself, so held-out eval never sees a training question and scores
each problem once. Building that filter costs ~60 us per item once. The test split draws
``test_size`` items (default ``dataset_size``): a small problem space can train on a few problems
(a small ``dataset_size``) and hold out all the rest (a large ``test_size``).

Which problem a seed gives: in the train split, ``reset(seed=s)`` draws it from
``self.np_random``. In the test split it sweeps a fixed shuffle of the held-out problems:
seed ``s`` gives problem ``order[s % num_tasks]``, so ``ptgym eval tasks=N`` (consecutive seeds)
scores N distinct problems whenever N <= ``num_tasks``, instead of drawing with replacement.

## Action space

``Text``: the assistant's reply, as a ``str`` or a ``ptgym.Action`` (its ``.text`` is used).

## Observation space

``Messages``: the new chat messages. ``reset`` gives ``[system, user(question)]``; a wrong
answer with attempts left gives ``[user(feedback)]``; the last step gives ``[]``.

## Rewards

Rewards sit on the last turn only (a trajectory's return equals its last reward):
``attempt_discount ** (attempt - 1)`` if the answer is correct, else 0, plus ``format_reward``
if that last reply had an extractable final answer. Earlier turns get 0. With the defaults
(one attempt, no format reward) the reward is exactly 1.0 or 0.0.

## Episode end

``terminated`` when the answer is correct or ``max_attempts`` replies were given. ``truncated``
is always False here (token/turn budgets are the rollout's ``TimeLimit``). A reply without an
extractable answer uses up an attempt.

Hints (``hints=True``): when both the reply and the gold answer are real numbers, the feedback
adds "The answer is higher than X." or "... lower than X." (X is the model's answer). Without a
numeric answer, or with ``hints=False``, the feedback is the plain "Try again" sentence.

## Arguments

- ``generators``: list of reasoning-gym dataset names (equal weights) or ``{name: weight}``.
- ``difficulty``: reasoning-gym curriculum level (0 = easiest) applied to every generator that
  has a curriculum (ranges span levels 0..difficulty); None keeps reasoning-gym's defaults.
- ``generator_config``: ``{name: {field: value}}`` passed to that generator's config; wins over
  ``difficulty`` (e.g. ``{"basic_arithmetic": {"max_digits": 2}}``).
- ``dataset_size``: problems per generator. ``dataset_seed``: reasoning-gym seed.
- ``test_size``: items the test split draws per generator before its filter (None: dataset_size).
- ``split``: ``"train"`` or ``"test"``. ``max_attempts``: replies per episode.
- ``format_reward``, ``attempt_discount``, ``hints``: see Rewards and Hints.
- ``system_prompt``: the system message (None: no system message).

``reset(options=...)``: ``{"task_id": "chain_sum/17"}`` or ``{"index": i}`` picks a problem
(``index`` runs over the generators in order, for full sweeps; ``num_tasks`` is the total).
Task ids are ``"{generator}/{i}"`` in the train split and ``"{generator}/test/{i}"`` in the test
split. ``info``: ``task_id``, ``answer`` (gold), ``tools`` (``[]``), ``split``; after each step
also ``correct``, ``extracted`` (the answer span or None), ``attempt`` (1-based).

``gymnasium.utils.env_checker.check_env`` passes on the unwrapped env in full (its random
``Text`` actions are just wrong answers). reasoning-gym is imported lazily (~0.7 s) when the
first env is built, so ``import ptgym.envs`` stays cheap.

## Version history

- v0: initial version.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from functools import lru_cache
from typing import Any

import numpy as np

from ptgym.env import TextEnv, action_text
from ptgym.types import Action

from .answer import extract_answer, numeric_value, verify_answer

DEFAULT_GENERATORS = ("basic_arithmetic", "chain_sum", "gsm_symbolic")
DEFAULT_SYSTEM_PROMPT = (
    "Solve the problem. Reason briefly, step by step, then give the final answer "
    "as \\boxed{answer}."
)
TRY_AGAIN = "That is not correct. Try again."
NO_ANSWER = "I could not find a final answer. End your reply with \\boxed{answer}."
TEST_SEED_OFFSET = 2**31


def _generator_config(name: str, difficulty: int | None, overrides: dict[str, Any]) -> str:
    """The reasoning-gym config for one generator, as canonical JSON (the dataset cache key)."""
    from reasoning_gym.factory import DATASETS, create_curriculum, has_curriculum

    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown reasoning-gym generator {name!r}{hint}")
    config: dict[str, Any] = {}
    if difficulty is not None and has_curriculum(name):
        curriculum = create_curriculum(name)
        curriculum.set_global_level(difficulty)
        config = dataclasses.asdict(curriculum.generate_configuration())
        config.pop("seed", None)
        config.pop("size", None)
    fields = {f.name for f in dataclasses.fields(DATASETS[name][1])} - {"seed", "size"}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(
            f"generator_config[{name!r}] has unknown fields {sorted(unknown)}; "
            f"valid fields: {sorted(fields)}"
        )
    config.update(overrides)
    return json.dumps(config, sort_keys=True, default=list)


@lru_cache(maxsize=64)
def _dataset(name: str, config_json: str, seed: int, size: int) -> Any:
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=seed, size=size, **json.loads(config_json))


@lru_cache(maxsize=1 << 16)
def _item(name: str, config_json: str, seed: int, size: int, index: int) -> tuple[str, str]:
    entry = _dataset(name, config_json, seed, size)[index]
    return entry["question"], str(entry["answer"])


@lru_cache(maxsize=64)
def _test_indices(
    name: str, config_json: str, seed: int, size: int, test_size: int
) -> tuple[int, ...]:
    """Test-split item indices whose question is not a train-split question, each question's
    first occurrence only."""
    seen = {_dataset(name, config_json, seed, size)[i]["question"] for i in range(size)}
    test = _dataset(name, config_json, seed + TEST_SEED_OFFSET, test_size)
    keep = []
    for i in range(test_size):
        question = test[i]["question"]
        if question not in seen:
            seen.add(question)
            keep.append(i)
    return tuple(keep)


class MathEnv(TextEnv):
    """Verifiable math problems from reasoning-gym (see the module docstring for the contract)."""

    def __init__(
        self,
        generators: list[str] | dict[str, float] | None = None,
        difficulty: int | None = None,
        generator_config: dict[str, dict[str, Any]] | None = None,
        dataset_size: int = 10_000,
        dataset_seed: int = 0,
        test_size: int | None = None,
        split: str = "train",
        max_attempts: int = 1,
        format_reward: float = 0.0,
        attempt_discount: float = 1.0,
        hints: bool = False,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        test_size = dataset_size if test_size is None else test_size
        for key, value in (("dataset_size", dataset_size), ("test_size", test_size)):
            if not 0 < value < TEST_SEED_OFFSET:
                raise ValueError(f"{key} must be in [1, 2**31), got {value}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        weights = dict.fromkeys(generators or DEFAULT_GENERATORS, 1.0)
        if isinstance(generators, dict):
            weights = {k: float(v) for k, v in generators.items()}
        if not weights or min(weights.values()) <= 0:
            raise ValueError(f"generators need positive weights, got {weights}")
        unknown = set(generator_config or {}) - set(weights)
        if unknown:
            raise ValueError(f"generator_config names generators not in use: {sorted(unknown)}")
        self.generators = list(weights)
        self.weights = np.array(list(weights.values())) / sum(weights.values())  # (G,)
        self.split = split
        self.max_attempts = max_attempts
        self.format_reward = format_reward
        self.attempt_discount = attempt_discount
        self.hints = hints
        self.system_prompt = system_prompt
        self._seed = dataset_seed + (TEST_SEED_OFFSET if split == "test" else 0)
        self._size = test_size if split == "test" else dataset_size
        self._configs = {
            name: _generator_config(name, difficulty, (generator_config or {}).get(name, {}))
            for name in self.generators
        }
        self._indices = {
            name: (
                _test_indices(name, self._configs[name], dataset_seed, dataset_size, test_size)
                if split == "test"
                else range(dataset_size)
            )
            for name in self.generators
        }
        empty = [name for name, idx in self._indices.items() if len(idx) == 0]
        if empty:
            raise ValueError(
                f"the test split of {', '.join(empty)} is empty: with this generator_config every "
                "problem also appears in the train split; allow more problems (more digits or "
                "terms) or use split='train'"
            )
        # The test split's sweep order (see "Which problem a seed gives").
        self._test_order = (
            np.random.default_rng(dataset_seed).permutation(self.num_tasks)
            if split == "test"
            else None
        )
        self.task_id = ""
        self.answer = ""
        self.attempt = 0
        self._done = False

    @property
    def num_tasks(self) -> int:
        """Problems reachable with ``options={"index": i}``, summed over generators."""
        return sum(len(ix) for ix in self._indices.values())

    def _task_id(self, name: str, index: int) -> str:
        return f"{name}/test/{index}" if self.split == "test" else f"{name}/{index}"

    def _pick(self, options: dict[str, Any] | None, seed: int | None) -> tuple[str, int]:
        options = dict(options or {})
        if not options and self.split == "test" and seed is not None:
            options["index"] = int(self._test_order[seed % self.num_tasks])
        if "task_id" in options:
            task_id = str(options["task_id"])
            name, _, index = task_id.rpartition("/")
            name = name.removesuffix("/test")
            if (
                name not in self._indices
                or not index.isdigit()
                or self._task_id(name, int(index)) != task_id
                or int(index) not in self._indices[name]
            ):
                raise ValueError(
                    f"task_id {task_id!r} is not a {self.split} task of this env; "
                    f"expected e.g. {self._task_id(self.generators[0], 0)!r}"
                )
            return name, int(index)
        if "index" in options:
            i = int(options["index"])
            if not 0 <= i < self.num_tasks:
                raise ValueError(f"index must be in [0, {self.num_tasks}), got {i}")
            for name in self.generators:
                if i < len(self._indices[name]):
                    return name, self._indices[name][i]
                i -= len(self._indices[name])
        name = self.generators[int(self.np_random.choice(len(self.generators), p=self.weights))]
        indices = self._indices[name]
        return name, indices[int(self.np_random.integers(len(indices)))]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        super().reset(seed=seed)
        name, index = self._pick(options, seed)
        question, self.answer = _item(name, self._configs[name], self._seed, self._size, index)
        self.task_id = self._task_id(name, index)
        self.attempt = 0
        self._done = False
        obs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        obs.append({"role": "user", "content": question})
        self.messages = [dict(m) for m in obs]
        info = {"task_id": self.task_id, "answer": self.answer, "tools": [], "split": self.split}
        return obs, info

    def step(
        self, action: str | Action
    ) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        if not self.task_id or self._done:
            raise RuntimeError("MathEnv.step called before reset() or after the episode ended")
        text = action_text(action)
        self.attempt += 1
        self.messages.append({"role": "assistant", "content": text})
        extracted = extract_answer(text)
        correct = extracted is not None and verify_answer(extracted, self.answer)
        terminated = correct or self.attempt >= self.max_attempts
        self._done = terminated
        reward, obs = 0.0, []
        if terminated:
            reward = float(correct) * self.attempt_discount ** (self.attempt - 1)
            reward += self.format_reward if extracted is not None else 0.0
        else:
            obs = [{"role": "user", "content": self._feedback(extracted)}]
            self.messages.extend(dict(m) for m in obs)
        info = {
            "task_id": self.task_id,
            "answer": self.answer,
            "correct": correct,
            "extracted": extracted,
            "attempt": self.attempt,
        }
        return obs, reward, terminated, False, info

    def _feedback(self, extracted: str | None) -> str:
        if extracted is None:
            return NO_ANSWER
        if self.hints:
            guess, gold = numeric_value(extracted), numeric_value(self.answer)
            if guess is not None and gold is not None and guess != gold:
                side = "higher" if gold > guess else "lower"
                return f"{TRY_AGAIN} The answer is {side} than {extracted}."
        return TRY_AGAIN
