"""Final-answer extraction and checking for verifiable-reward envs (math).

Checking a model's reply is two steps, kept apart so each can be tested and shown to a person:

1. ``extract_answer(text)`` finds the *final answer span* in free-form text, by a fixed
   precedence (first rule that matches wins):

   1. the content of the **last** ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced;
   2. the **last** answer line: ``Answer: ...``, ``answer is ...``, ``final answer is ...``,
      ``Final Answer: ...`` (case-insensitive, markdown bold allowed); the span runs to the end
      of its sentence (a ``.``, ``;``, ``!`` or ``?`` before whitespace) or line, or, if that is
      empty, is the next non-empty line;
   3. the **last number** in the text: integers, decimals, negatives, thousands separators
      (``1,234``), fractions ``a/b`` and ``\\frac{a}{b}``, an optional ``%``.

   So an ``Answer:`` line beats a later number ("Answer: 12. Check: 3 * 4 = 12, not 13" gives
   ``12``), and a box beats everything. ``$`` signs (math delimiters or currency), ``\\(``
   ``\\)``, markdown ``**`` and a trailing period are removed from the span. No match gives None.

2. ``verify_answer(answer, gold)`` compares the span with the gold answer using math-verify
   (Kydlíček et al., HuggingFace 2025): both sides are parsed to SymPy and compared
   mathematically (``1/2 == 0.5 == \\dfrac{1}{2}``; ``x = 3`` matches 3; ``50\\%`` matches 0.5
   and 50, as math-verify decides; decimals agree to 6 places). Before parsing, a span that is
   a number followed by words (``42 apples``, ``12 cm``, ``5 km/h``, ``42 because ...``) keeps
   the number only. A gold that is plain words (``True``, ``Tuesday``) is compared as a
   case-insensitive string instead.

Threads: math-verify bounds its parse/verify time with ``signal.alarm``, which raises outside
the main thread, and the rollout collector steps envs in a thread pool. In the main thread we
keep its timeouts (``TIMEOUT_S``); in any other thread we pass ``parsing_timeout=None`` /
``timeout_seconds=None`` and bound the work instead by capping the span at ``MAX_ANSWER_CHARS``
(the expensive SymPy cases are long expressions; the span, not the whole reply, is parsed).
Checking never raises: any error or timeout counts as a wrong answer.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache
from typing import Any

from math_verify import LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

# Worker threads call math-verify without its signal-based timeout (signals only work in the main
# thread); the span length cap below is the guard. Its "Timeout is disabled" warning would repeat
# once per racing thread on every run, so only its errors are shown.
for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).setLevel(logging.ERROR)

TIMEOUT_S = 5
MAX_ANSWER_CHARS = 300

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(
    r"\b(?:final\s+)?answer\b\**\s*(?:is\b|:|=)\**[ \t]*:?[ \t]*(.*)", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"[.;!?](?=\s|$)")
_NUMBER = re.compile(
    r"-?\\d?frac\{-?\d+\}\{\d+\}"  # \frac{a}{b}, \dfrac{a}{b}
    r"|(?<![\w.,])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?%?"
)
_NUMBER_THEN_WORDS = re.compile(r"^(-?[\d.,]+(?:/\d+)?%?)\s+[A-Za-z(].*$", re.DOTALL)
_PLAIN_WORDS = re.compile(r"^[A-Za-z][A-Za-z ]*$")
_TEXT_MACRO = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
_LATEX_ONLY = [LatexExtractionConfig()]


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` whose braces balance, or None."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def _last_answer_line(text: str) -> str | None:
    """The span after the last ``Answer:``-style marker (see the module docstring), or None."""
    matches = list(_ANSWER_LINE.finditer(text))
    if not matches:
        return None
    span = matches[-1].group(1)
    if not _clean(span):
        rest = text[matches[-1].end() :].strip()
        span = rest.splitlines()[0] if rest else ""
    end = _SENTENCE_END.search(span)
    return span[: end.start()] if end else span


def _clean(span: str) -> str:
    span = span.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    span = re.sub(r"(?<!\\)\$", "", span).replace("**", "")
    return span.strip().rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer span of ``text`` by the module's precedence, or None if there is none."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed) or None
    line = _last_answer_line(text)
    if line is not None and _clean(line):
        return _clean(line)
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _timeout() -> int | None:
    """math-verify's signal timeouts only work in the main thread (see module docstring)."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(expr: str) -> list[Any]:
    """SymPy parse of one answer: as LaTeX first, then as plain text (``138/583``, ``1,234``)."""
    t = _timeout()
    expr = re.sub(r"(?<!\\)%", r"\\%", expr)  # a bare % would start a LaTeX comment
    parsed = parse(f"${expr}$", extraction_config=_LATEX_ONLY, parsing_timeout=t)
    return parsed or parse(expr, parsing_timeout=t)


@lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    return tuple(_parse(gold))


def _strip_units(answer: str) -> str:
    """``12\\text{ cm}`` / ``42 apples`` / ``5 km/h`` -> the leading number; else unchanged."""
    answer = _TEXT_MACRO.sub(r" \1", answer).strip()
    number = _NUMBER_THEN_WORDS.match(answer)
    return number.group(1) if number else answer


def _norm_words(s: str) -> str:
    return " ".join(s.lower().split())


def verify_answer(answer: str, gold: str) -> bool:
    """Whether an extracted answer span equals the gold answer (rules in the module docstring).

    Never raises; errors and timeouts count as False.
    """
    try:
        answer, gold = answer.strip(), str(gold).strip()
        if not answer or len(answer) > MAX_ANSWER_CHARS:
            return False
        if _PLAIN_WORDS.match(gold):
            return _norm_words(answer) == _norm_words(gold)
        gold_parsed = _parse_gold(gold)
        if not gold_parsed:
            return _norm_words(answer) == _norm_words(gold)
        parsed = _parse(_strip_units(answer))
        return bool(verify(list(gold_parsed), parsed, timeout_seconds=_timeout()))
    except (Exception, TimeoutException):
        return False


def check_answer(prediction_text: str, gold: str) -> bool:
    """Whether the final answer in a model's reply equals ``gold``: extract, then verify."""
    answer = extract_answer(prediction_text)
    return answer is not None and verify_answer(answer, gold)


def numeric_value(answer: str) -> float | None:
    """The real number an answer span denotes (``\\frac{1}{2}`` -> 0.5), or None.

    Used for higher/lower hints; never raises.
    """
    try:
        for value in _parse(_strip_units(answer)):
            value = getattr(value, "rhs", value)  # x = 3 -> 3
            if getattr(value, "is_number", False):
                number = complex(value.doit())  # doit(): "50%" parses as 50*(1/100), unevaluated
                if number.imag == 0:
                    return number.real
    except (Exception, TimeoutException):
        pass
    return None
