"""Practice tasks for ``CodeTools-v0``: small Python functions written here, not HumanEval.

The warm start for the tool protocol (``ptgym envs demos code-tools``) writes solved episodes as
SFT data; played on HumanEval they would train on the benchmark the env is scored on. These
tasks are generated instead, from thirteen families (arithmetic, counting characters, filtering
and transforming lists, clamping, digits, words, palindromes, ...) with names, parameters and
constants varied. Each is a ``humaneval_tasks.Task`` in HumanEval's shape: a prompt (signature +
docstring with two ``>>>`` examples), a canonical body, and a ``check(candidate)`` of asserts
that the same grader runs.

Every task has two implementations: the canonical body (source text, what a demonstration
writes) and a reference function here that computes the expected values of the examples and
asserts. The tests grade every canonical body against those asserts in the sandbox, so a slip in
either one fails a test instead of becoming a wrong demonstration. Everything is fixed tables:
no randomness, the same tasks on every machine.

No task is a HumanEval problem under another name: no entry point or prompt is shared (tested),
problems HumanEval has (a string palindrome, the longest string, the positive numbers of a list,
1 + ... + n, the maximum of a list) are left out, and no canonical body passes every assert of
any HumanEval ``check`` (checked once by running every body against every ``check``: the closest
is ``count_punctuation`` with 5 of 6 on HumanEval/91, where a constant 0 passes 4;
``is_palindrome_number`` reverses digits arithmetically because ``str(n)[::-1]`` solved /48).
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ptgym.envs.humaneval_tasks import Task, visible_examples


@dataclass(frozen=True)
class _Spec:
    name: str  # the entry point
    signature: str  # "(x: int) -> int"
    doc: str  # the docstring's first line
    body: str  # the canonical solution, unindented
    ref: Callable[..., Any]  # computes the expected values, written apart from ``body``
    cases: list[tuple[Any, ...]]  # argument tuples (the docstring shows two of them)


def _rotate(cases: list[tuple[Any, ...]], k: int) -> list[tuple[Any, ...]]:
    """The cases started at ``k``: variants of a family show different examples."""
    k %= len(cases)
    return cases[k:] + cases[:k]


def _linear() -> list[_Spec]:
    table = [
        ("add_two", "x", 1, 2),
        ("plus_seven", "n", 1, 7),
        ("subtract_four", "x", 1, -4),
        ("triple", "n", 3, 0),
        ("times_five_plus_one", "x", 5, 1),
        ("double_minus_three", "value", 2, -3),
        ("times_ten_plus_nine", "x", 10, 9),
        ("times_four_minus_ten", "n", 4, -10),
    ]
    cases = [(0,), (5,), (-3,), (12,), (100,), (-41,)]
    out = []
    for k, (name, v, a, b) in enumerate(table):
        expr, doc = (v, v) if a == 1 else (f"{v} * {a}", f"{v} times {a}")
        if b:
            expr += f" + {b}" if b > 0 else f" - {-b}"
            doc += f" plus {b}" if b > 0 else f" minus {-b}"
        ref = functools.partial(lambda x, a, b: a * x + b, a=a, b=b)
        sig = f"({v}: int) -> int"
        out.append(_Spec(name, sig, f"Return {doc}.", f"return {expr}", ref, _rotate(cases, k)))
    return out


def _count_chars() -> list[_Spec]:
    table = [
        ("count_math_signs", "+-*/", "arithmetic signs + - * /"),
        ("count_digits", "0123456789", "digits"),
        ("count_spaces", " ", "spaces"),
        ("count_punctuation", ".,!?", "punctuation marks . , ! ?"),
        ("count_brackets", "()[]{}", "brackets ( ) [ ] { }"),
        ("count_letter_x", "xX", "letters x and X"),
    ]
    cases = [("hello world",), ("Max saw 2 foxes, 3 boxes!",), ("",), ("(a + b) * [c]",)]
    cases += [("AEIOU aeiou?",), ("no way. {42}",), ("6/3 - 1*2",)]
    out = []
    for k, (name, chars, desc) in enumerate(table):
        body = f"count = 0\nfor ch in s:\n    if ch in {chars!r}:\n        count += 1\nreturn count"
        ref = functools.partial(lambda s, chars: sum(s.count(c) for c in chars), chars=chars)
        doc = f"Return how many characters of s are {desc}."
        out.append(_Spec(name, "(s: str) -> int", doc, body, ref, _rotate(cases, k)))
    return out


def _filtered() -> list[_Spec]:
    """Sum or count the numbers of a list that pass a test."""
    table = [
        ("sum_even", "sum", "the even numbers", "n % 2 == 0", lambda n: not n & 1),
        ("sum_odd", "sum", "the odd numbers", "n % 2 != 0", lambda n: n & 1),
        ("sum_positive", "sum", "the positive numbers", "n > 0", lambda n: n > 0),
        ("sum_negative", "sum", "the negative numbers", "n < 0", lambda n: n < 0),
        ("sum_multiples_of_three", "sum", "the multiples of 3", "n % 3 == 0", lambda n: n % 3 == 0),
        ("sum_above_ten", "sum", "the numbers greater than 10", "n > 10", lambda n: n > 10),
        ("sum_below_five", "sum", "the numbers less than 5", "n < 5", lambda n: n < 5),
        ("count_even", "count", "the even numbers", "n % 2 == 0", lambda n: not n & 1),
        ("count_negative", "count", "the negative numbers", "n < 0", lambda n: n < 0),
        ("count_zeros", "count", "the zeros", "n == 0", lambda n: n == 0),
        ("count_above_hundred", "count", "the numbers above 100", "n > 100", lambda n: n > 100),
        ("count_multiples_of_5", "count", "the multiples of 5", "n % 5 == 0", lambda n: n % 5 == 0),
    ]
    cases = [([1, 2, 3, 4, 5, 6],), ([],), ([-10, 0, 15, 101, 250],), ([7, -3, 12, 0, 0, 9],)]
    cases += [([200, -5, 11, 4],), ([-2, -4, -6],)]
    out = []
    for k, (name, kind, desc, cond, pred) in enumerate(table):
        if kind == "sum":
            doc = f"Return the sum of {desc} in nums (0 when there are none)."
            body = f"total = 0\nfor n in nums:\n    if {cond}:\n        total += n\nreturn total"
            ref = functools.partial(lambda xs, p: sum(x for x in xs if p(x)), p=pred)
        else:
            doc = f"Return how many of the numbers in nums are {desc.removeprefix('the ')}."
            body = f"return sum(1 for n in nums if {cond})"
            ref = functools.partial(lambda xs, p: len(list(filter(p, xs))), p=pred)
        out.append(_Spec(name, "(nums: list[int]) -> int", doc, body, ref, _rotate(cases, k)))
    return out


def _clamp() -> list[_Spec]:
    def spec(name: str, v: str, lo: int, hi: int, k: int) -> _Spec:
        body = f"if {v} < {lo}:\n    return {lo}\nif {v} > {hi}:\n    return {hi}\nreturn {v}"
        doc = f"Return {v} clamped into [{lo}, {hi}]: {lo} below it, {hi} above it, else {v}."
        ref = functools.partial(lambda x, lo, hi: max(lo, min(hi, x)), lo=lo, hi=hi)
        return _Spec(name, f"({v}: int) -> int", doc, body, ref, _rotate(cases, k))

    cases = [(50,), (-7,), (300,), (0,), (9,), (-100,), (255,)]
    general = _Spec(
        "clamp",
        "(x: int, lo: int, hi: int) -> int",
        "Return x clamped into [lo, hi] (lo <= hi): lo if x < lo, hi if x > hi, else x.",
        "return max(lo, min(hi, x))",
        lambda x, lo, hi: lo if x < lo else hi if x > hi else x,
        [(5, 0, 10), (-3, 0, 10), (42, 1, 6), (7, 7, 7), (-20, -10, -5), (3, -2, 2)],
    )
    fixed = [("clamp_percent", "p", 0, 100), ("clamp_byte", "value", 0, 255)]
    fixed += [("clamp_digit", "n", 0, 9), ("clamp_temperature", "t", -40, 50)]
    return [general] + [spec(*row, k) for k, row in enumerate(fixed)]


def _or_none() -> list[_Spec]:
    nums = [([3, 9, -2, 7],), ([],), ([5],), ([-8, -1, -30],), ([4, 4, 0, 12, 1],)]
    words = [("the cat sat",), ("",), ("hello",), ("  two  words ",), ("a b c",)]
    table = [
        ("spread", "the largest number in nums minus the smallest", "nums",
         "if not nums:\n    return None\nreturn max(nums) - min(nums)",
         lambda xs: sorted(xs)[-1] - sorted(xs)[0] if xs else None),
        ("first_item", "the first number in nums", "nums", "return nums[0] if nums else None",
         lambda xs: next(iter(xs), None)),
        ("last_item", "the last number in items", "items", "return items[-1] if items else None",
         lambda xs: xs[len(xs) - 1] if xs else None),
        ("second_item", "the second number in values", "values",
         "if len(values) < 2:\n    return None\nreturn values[1]", lambda xs: xs[1:2][0] if xs[1:] else None),
        ("first_word", "the first word of sentence", "sentence",
         "words = sentence.split()\nreturn words[0] if words else None",
         lambda s: s.split()[0] if s.split() else None),
        ("last_word", "the last word of text", "text",
         "words = text.split()\nif not words:\n    return None\nreturn words[-1]",
         lambda s: next(reversed(s.split()), None)),
    ]  # fmt: skip
    out = []
    for k, (name, what, v, body, ref) in enumerate(table):
        if v in ("sentence", "text"):
            sig, none, cases = f"({v}: str) -> str | None", f"{v} has no words", words
        else:
            sig, cases = f"({v}: list[int]) -> int | None", nums
            none = f"{v} has fewer than two" if name == "second_item" else f"{v} is empty"
        cases = [cases[0], cases[1], *_rotate(cases[2:], k)]  # always show the None case
        out.append(_Spec(name, sig, f"Return {what}, or None when {none}.", body, ref, cases))
    return out


def _palindromes() -> list[_Spec]:
    return [
        _Spec(
            "is_palindrome_number",
            "(n: int) -> bool",
            "Return True if the decimal digits of n read the same backwards (never when n < 0).",
            # Arithmetic, not str(n)[::-1]: that body would also solve HumanEval/48 (strings).
            "if n < 0:\n    return False\nbackwards, rest = 0, n\nwhile rest:\n"
            "    backwards = backwards * 10 + rest % 10\n    rest //= 10\nreturn backwards == n",
            lambda n: n >= 0 and str(n) == str(n)[::-1],
            [(121,), (123,), (-121,), (7,), (1221,), (10,), (0,)],
        ),
        _Spec(
            "is_reverse_of",
            "(a: str, b: str) -> bool",
            "Return True if b is the string a written backwards.",
            "return a[::-1] == b",
            lambda a, b: list(a) == list(reversed(b)),
            [("abc", "cba"), ("abc", "abc"), ("", ""), ("ab", "ba "), ("noon", "noon")],
        ),
        _Spec(
            "mirror",
            "(s: str) -> str",
            "Return s followed by s written backwards.",
            "return s + s[::-1]",
            lambda s: s + "".join(reversed(s)),
            [("abc",), ("",), ("x",), ("ab cd",), ("12",)],
        ),
        _Spec(
            "palindrome_words",
            "(words: list[str]) -> list[str]",
            "Return the words that read the same backwards, in their order.",
            "return [word for word in words if word == word[::-1]]",
            lambda ws: [w for w in ws if list(w) == list(reversed(w))],
            [(["level", "cat", "noon"],), ([],), (["ab", "ba"],), (["a", "bb", "abc", "abba"],)]
            + [(["racecar"],)],
        ),
    ]


def _words() -> list[_Spec]:
    cases = [("the quick brown fox",), ("hello",), ("",), ("  many   spaces here ",)]
    cases += [("Python is FUN",), ("a b c d",)]
    table = [
        ("reverse_words", "sentence", "str", "the words of {v} in reverse order, joined by single spaces",
         'return " ".join(reversed({v}.split()))', lambda s: " ".join(s.split()[::-1])),
        ("count_words", "text", "int", "how many words (runs of non-space characters) {v} has",
         "return len({v}.split())", lambda s: sum(1 for w in s.split(" ") if w)),
        ("acronym", "phrase", "str", "the first letters of the words of {v}, upper-cased",
         'return "".join(word[0].upper() for word in {v}.split())', lambda s: "".join(w[:1] for w in s.split()).upper()),
        ("snake_join", "text", "str", "the words of {v} lower-cased and joined by underscores",
         'return "_".join({v}.lower().split())', lambda s: "_".join(w.lower() for w in s.split())),
        ("kebab_join", "title", "str", "the words of {v} lower-cased and joined by hyphens",
         'return "-".join(word.lower() for word in {v}.split())', lambda s: "-".join(s.lower().split())),
        ("capitalize_words", "s", "str", "the words of {v}, each with its first letter upper case and the rest lower case, joined by single spaces",
         'return " ".join(word.capitalize() for word in {v}.split())', lambda s: " ".join(w[0].upper() + w[1:].lower() for w in s.split())),
    ]  # fmt: skip
    out = []
    for k, (name, v, typ, what, body, ref) in enumerate(table):
        doc = f"Return {what.format(v=v)}."
        out.append(
            _Spec(name, f"({v}: str) -> {typ}", doc, body.format(v=v), ref, _rotate(cases, k))
        )
    return out


def _repeat() -> list[_Spec]:
    table = [
        ("repeat_twice", 2, "", "s written 2 times in a row"),
        ("repeat_three_times", 3, "", "s written 3 times in a row"),
        ("echo", 2, " ", "2 copies of s separated by a space"),
        ("chant", 4, "-", "4 copies of s separated by hyphens"),
    ]
    cases = [("ab",), ("",), ("hey",), ("x",), ("go team",)]
    out = []
    for k, (name, times, sep, what) in enumerate(table):
        body = f"return s * {times}" if not sep else f"return {sep!r}.join([s] * {times})"
        ref = functools.partial(lambda s, n, sep: sep.join(s for _ in range(n)), n=times, sep=sep)
        out.append(_Spec(name, "(s: str) -> str", f"Return {what}.", body, ref, _rotate(cases, k)))
    return out


def _digits() -> list[_Spec]:
    cases = [(0,), (7,), (1234,), (9081,), (505,), (99999,)]
    loop = "{init}\nwhile True:\n    {step}\n    n //= 10\n    if n == 0:\n        return {result}"
    table = [
        ("digit_sum", "the sum of the decimal digits of n", "total = 0", "total += n % 10", "total",
         lambda n: sum(map(int, str(n)))),
        ("digit_count", "how many decimal digits n has", "count = 0", "count += 1", "count",
         lambda n: len(str(n))),
        ("largest_digit", "the largest decimal digit of n", "best = 0", "best = max(best, n % 10)", "best",
         lambda n: int(max(str(n)))),
        ("digit_product", "the product of the decimal digits of n", "product = 1", "product *= n % 10", "product",
         lambda n: functools.reduce(lambda a, d: a * int(d), str(n), 1)),
    ]  # fmt: skip
    out = []
    for k, (name, what, init, step, result, ref) in enumerate(table):
        body = loop.format(init=init, step=step, result=result)
        doc = f"Return {what} (n >= 0)."
        out.append(_Spec(name, "(n: int) -> int", doc, body, ref, _rotate(cases, k)))
    return out


def _range_sums() -> list[_Spec]:
    cases = [(10,), (1,), (0,), (16,), (100,), (-5,)]
    out = [
        _Spec(
            "sum_of_odds_up_to",
            "(n: int) -> int",
            "Return the sum of the odd numbers from 1 to n (0 when n < 1).",
            "total = 0\nfor i in range(1, n + 1, 2):\n    total += i\nreturn total",
            lambda n: ((n + 1) // 2) ** 2 if n > 0 else 0,
            cases,
        ),
        _Spec(
            "sum_of_squares",
            "(n: int) -> int",
            "Return 1*1 + 2*2 + ... + n*n (0 when n < 1).",
            "return sum(i * i for i in range(1, n + 1))",
            lambda n: n * (n + 1) * (2 * n + 1) // 6 if n > 0 else 0,
            _rotate(cases, 1),
        ),
    ]
    multiples = [("sum_multiples_of_3_below", 3), ("sum_multiples_of_5_below", 5)]
    for k, (name, m) in enumerate(multiples):
        body = f"return sum(i for i in range(1, n) if i % {m} == 0)"
        ref = functools.partial(lambda n, m: sum(range(m, max(n, 0), m)), m=m)
        doc = f"Return the sum of the positive multiples of {m} less than n."
        out.append(_Spec(name, "(n: int) -> int", doc, body, ref, _rotate(cases, k + 2)))
    out.append(
        _Spec(
            "sum_multiples_of_7_below",
            "(limit: int) -> int",
            "Return the sum of the positive multiples of 7 less than limit.",
            "total = 0\nfor i in range(7, limit, 7):\n    total += i\nreturn total",
            lambda n: sum(i for i in range(1, n) if i % 7 == 0),
            _rotate(cases, 4),
        )
    )
    return out


def _transforms() -> list[_Spec]:
    cases = [([1, 2, 3],), ([],), ([-4, 0, 4],), ([5, 5, 1, 5, 2],), ([10, -3, 7, -3],)]
    table = [
        ("double_each", "each number of nums times 2", "return [n * 2 for n in nums]", lambda xs: [x + x for x in xs]),
        ("square_each", "the square of each number of nums", "return [n * n for n in nums]", lambda xs: [x**2 for x in xs]),
        ("negate_each", "each number of nums with its sign flipped", "return [-n for n in nums]", lambda xs: list(map(lambda x: 0 - x, xs))),
        ("evens_only", "the even numbers of nums, in their order", "return [n for n in nums if n % 2 == 0]", lambda xs: list(filter(lambda x: not x & 1, xs))),
        ("unique_in_order", "nums without repeats, each number where it first appears", "seen = []\nfor n in nums:\n    if n not in seen:\n        seen.append(n)\nreturn seen", lambda xs: list(dict.fromkeys(xs))),
        ("reversed_list", "the numbers of nums in reverse order", "return nums[::-1]", lambda xs: list(reversed(xs))),
    ]  # fmt: skip
    out = []
    for k, (name, what, body, ref) in enumerate(table):
        sig = "(nums: list[int]) -> list[int]"
        out.append(_Spec(name, sig, f"Return {what}.", body, ref, _rotate(cases, k)))
    return out


def _divisible() -> list[_Spec]:
    cases = [(12,), (7,), (0,), (-21,), (84,), (100,), (13,)]
    table = [("is_even", 2), ("is_divisible_by_three", 3), ("is_divisible_by_seven", 7)]
    table += [("is_multiple_of_twelve", 12)]
    out = []
    for k, (name, m) in enumerate(table):
        ref = functools.partial(lambda n, m: n // m * m == n, m=m)
        doc = f"Return True if n is divisible by {m}."
        body = f"return n % {m} == 0"
        out.append(_Spec(name, "(n: int) -> bool", doc, body, ref, _rotate(cases, k)))
    out.append(
        _Spec(
            "is_divisible",
            "(n: int, d: int) -> bool",
            "Return True if n is divisible by d (d != 0).",
            "return n % d == 0",
            lambda n, d: n // d * d == n,
            [(10, 5), (10, 3), (0, 4), (-9, 3), (49, 7), (50, 7)],
        )
    )
    return out


def _string_tests() -> list[_Spec]:
    cases = [("Apple pie",), ("route 66",), ("",), ("why?",), ("NoSpaces",), ("is it 5?",)]
    table = [
        ("has_digit", "s has at least one digit", "return any(ch.isdigit() for ch in s)",
         lambda s: any(c in "0123456789" for c in s)),
        ("starts_with_vowel", "s starts with a vowel (a, e, i, o, u, either case)",
         'return s[:1].lower() in ("a", "e", "i", "o", "u")', lambda s: bool(s) and s[0] in "aeiouAEIOU"),
        ("ends_with_question_mark", "s ends with '?'", 'return s.endswith("?")',
         lambda s: s[-1:] == "?"),
        ("contains_space", "s has at least one space", 'return " " in s',
         lambda s: s.find(" ") >= 0),
    ]  # fmt: skip
    out = []
    for k, (name, what, body, ref) in enumerate(table):
        doc = f"Return True if {what}."
        out.append(_Spec(name, "(s: str) -> bool", doc, body, ref, _rotate(cases, k)))
    return out


FAMILIES = (
    _linear,
    _count_chars,
    _filtered,
    _clamp,
    _or_none,
    _palindromes,
    _words,
    _repeat,
    _digits,
    _range_sums,
    _transforms,
    _divisible,
    _string_tests,
)


def _task(index: int, s: _Spec) -> Task:
    wants = [repr(s.ref(*args)) for args in s.cases]
    # The docstring shows the first case and the next one with a different result.
    second = next((i for i, w in enumerate(wants) if w != wants[0]), 1)
    order = [0, second] + [i for i in range(1, len(wants)) if i != second]
    calls = [f"({', '.join(map(repr, s.cases[i]))})" for i in order]
    wants = [wants[i] for i in order]
    shown = "".join(
        f"    >>> {s.name}{c}\n    {w}\n" for c, w in zip(calls[:2], wants[:2], strict=True)
    )
    prompt = f'def {s.name}{s.signature}:\n    """{s.doc}\n{shown}    """\n'
    asserts = "".join(
        f"    assert candidate{c} == {w}\n" for c, w in zip(calls, wants, strict=True)
    )
    return Task(
        task_id=f"practice/{index}",
        prompt=prompt,
        entry_point=s.name,
        test=f"def check(candidate):\n{asserts}",
        canonical_solution=textwrap.indent(s.body, "    ") + "\n",
        examples=visible_examples(prompt, s.name),
    )


@functools.cache
def load_practice_tasks() -> tuple[Task, ...]:
    """The practice tasks, in a fixed order (practice/0, practice/1, ...)."""
    specs = [spec for family in FAMILIES for spec in family()]
    return tuple(_task(i, s) for i, s in enumerate(specs))
