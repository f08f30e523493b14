"""Final-answer extraction and checking: the rules in ``ptgym.envs.answer``, case by case."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from ptgym.envs.answer import check_answer, extract_answer, numeric_value, verify_answer

# (model reply, gold answer, expected reward): real shapes of model output.
REWARD_TABLE = [
    # \boxed{} and LaTeX
    ("So the answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
    ("$\\boxed{\\dfrac{3}{4}}$", "0.75", 1.0),
    ("\\boxed{-\\frac{3}{2}}", "-1.5", 1.0),
    ("\\boxed{0.5}", "1/2", 1.0),
    ("\\boxed{\\frac{276}{1166}}", "138/583", 1.0),
    ("\\boxed{2^{10}}", "1024", 1.0),
    ("\\boxed{\\sqrt{2}}", "1.41421356", 1.0),
    ("First \\boxed{3}, no wait, \\boxed{4}", "4", 1.0),
    ("First \\boxed{3}, no wait, \\boxed{4}", "3", 0.0),
    ("\\boxed{12\\text{ cm}}", "12", 1.0),
    ("\\boxed{\\$12}", "12", 1.0),
    ("\\boxed{1, 2}", "1", 0.0),
    # the box beats an Answer: line and later numbers
    ("\\boxed{7} Answer: 8. Also 9", "7", 1.0),
    # Answer: lines
    ("Answer: x = 3", "3", 1.0),
    ("Answer: x = -3", "3", 0.0),
    ("**Final Answer:** 17", "17", 1.0),
    ("The final answer is: $-\\frac{3}{2}$.", "-1.5", 1.0),
    ("The answer is\n\n 99", "99", 1.0),
    ("Answer: 12. Check: 3 * 4 = 12, not 13", "12", 1.0),
    ("Answer: 42 because 40 + 2 = 42", "42", 1.0),
    ("Answer: 12 cm", "12", 1.0),
    ("The answer is 50%", "0.5", 1.0),
    ("Answer: 6.32", "6.32098837209", 0.0),
    ("Answer: 6.320988", "6.32098837209", 1.0),
    ("Answer: -0.25", "-1/4", 1.0),
    ("Answer: true", "True", 1.0),
    ("Answer: False", "True", 0.0),
    # last number in the text
    ("There are 42 apples.", "42", 1.0),
    ("The total cost is $1,234.", "1234", 1.0),
    ("The result is 1,000,000", "1000000", 1.0),
    ("First 3, then 5, so 8", "8", 1.0),
    ("5 + 3 = 8, and 8 - 2 = 6", "8", 0.0),
    ("It is 3.75 meters", "3.75", 1.0),
    ("Total: -12", "-12", 1.0),
    ("So it equals \\frac{1}{2}", "0.5", 1.0),
    ("To answer this, 3 + 4 = 7", "7", 1.0),
    ("\\boxed{\\frac{1}{2}", "0.5", 1.0),  # unbalanced box: falls through to the last number
    # no answer at all
    ("I don't know.", "5", 0.0),
    ("", "5", 0.0),
    ("\\boxed{}", "5", 0.0),
]


@pytest.mark.parametrize(("reply", "gold", "reward"), REWARD_TABLE)
def test_reward_table(reply: str, gold: str, reward: float) -> None:
    assert float(check_answer(reply, gold)) == reward


def test_reward_table_is_large_enough() -> None:
    assert len(REWARD_TABLE) >= 30


@pytest.mark.parametrize(
    ("reply", "span"),
    [
        ("\\boxed{\\frac{a}{\\sqrt{b}}}", "\\frac{a}{\\sqrt{b}}"),
        ("$\\boxed{5}$ then Answer: 6", "5"),
        ("Answer: 6. Later I computed 7", "6"),
        ("The answer is $1,234$.", "1,234"),
        ("**Answer**: \\(x = 2\\)", "x = 2"),
        ("values 1, 2 and -3", "-3"),
        ("ratio 3/4", "3/4"),
        ("the range 3-4", "4"),
        ("nothing here", None),
    ],
)
def test_extraction_precedence(reply: str, span: str | None) -> None:
    assert extract_answer(reply) == span


@pytest.mark.parametrize(
    ("span", "value"),
    [("\\frac{1}{2}", 0.5), ("x = 3", 3.0), ("50%", 0.5), ("42 apples", 42.0), ("abc", None)],
)
def test_numeric_value(span: str, value: float | None) -> None:
    assert numeric_value(span) == value


@pytest.mark.parametrize(
    "junk", ["\\frac{", "}}}{{{", "\\boxed{\\left(", "9" * 400, "x" * 10_000, "\\\\\\\\"]
)
def test_odd_input_is_wrong_not_an_error(junk: str) -> None:
    assert check_answer(junk, "5") is False
    assert verify_answer(junk, junk) in (True, False)


def test_checking_works_in_worker_threads() -> None:
    """math-verify's signal timeouts fail off the main thread; the checker must not."""
    replies = [("\\boxed{\\frac{1}{2}}", "0.5"), ("Answer: 7", "7"), ("Answer: 8", "7")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda rg: check_answer(*rg), replies))
    assert results == [True, True, False]
