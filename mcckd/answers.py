"""Final-answer extraction and comparison, shared by the judge (teacher rationales) and evaluation
(student generations), so both count "correct" the same way.

The gold answer decides the kind: a number (SVAMP, GSM8K, ASDiv), a choice letter (CommonsenseQA
"Answer Choices: A. ... E."), yes/no or true/false (StrategyQA), or else a maths expression,
compared for equivalence by `math-verify`. Extraction prefers the last explicit answer statement
("the answer is 18", as the canonical answer sentence and the MCC-KD data write it) and falls back
to the last candidate of the kind in the text, the usual convention for chain-of-thought.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from typing import Literal

AnswerKind = Literal["number", "choice", "boolean", "math"]

_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?(?:\s?/\s?\d+)?%?"
_STATEMENT = r"answer\s+is\s*:?\s*"
_NUMBER_STATEMENT = re.compile(_STATEMENT + "(" + _NUMBER + ")", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)
_CHOICE_STATEMENT = re.compile(_STATEMENT + r"\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE)
_ANY_CHOICE = re.compile(r"\(([A-J])\)|\b([A-J])[.)](?:\s|$)")
_BOOLEAN_WORDS = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
_BOOLEAN_STATEMENT = re.compile(_STATEMENT + r"(yes|no|true|false)\b", re.IGNORECASE)
_ANY_BOOLEAN = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_MATH_STATEMENT = re.compile(_STATEMENT + r"(.+?)\s*\.?\s*$", re.IGNORECASE | re.MULTILINE)
# math-verify hands expressions to sympy; a bounded length keeps one pathological rationale from
# stalling a whole batch (its own signal-based timeout only works on the main thread, so it is off).
MAX_MATH_CHARS = 300
# It warns on every call that its timeout is off; we bound inputs instead (above).
logging.getLogger("math_verify").setLevel(logging.ERROR)


def canonical_answer_sentence(answer: str) -> str:
    """The one sentence every training rationale ends with, so answer tokens match across rationales."""
    return f"The answer is {answer}."


def parse_number(text: str) -> Fraction | None:
    """The value of a number as written in rationales and labels, or None if it is not one."""
    t = text.strip().rstrip(".").replace(",", "").replace("$", "").replace(" ", "")
    percent = t.endswith("%")
    t = t.rstrip("%")
    try:
        value = Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def format_number(value: Fraction) -> str:
    """Canonical text of a number: integers without decimals, others as a short decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def answer_kind(gold: str) -> AnswerKind | None:
    """What kind of answer ``gold`` is, or None when it is not a usable answer at all."""
    g = gold.strip()
    if not g:
        return None
    if parse_number(g) is not None:
        return "number"
    if re.fullmatch(r"[A-J]", g):
        return "choice"
    if g.lower() in _BOOLEAN_WORDS:
        return "boolean"
    # A maths answer has a digit or a LaTeX command; bare words ("n/a", "banana") parse as symbols.
    return "math" if re.search(r"\d|\\", g) and _math_parse(g) else None


def canonical_answer(gold: str) -> str:
    """Gold answer as the canonical sentence writes it (``18``, ``C``, ``yes``, an expression)."""
    kind = answer_kind(gold)
    if kind == "number":
        return format_number(parse_number(gold))
    if kind == "boolean":
        return _BOOLEAN_WORDS[gold.strip().lower()]
    return gold.strip()


def extract_answer(text: str, kind: AnswerKind = "number") -> str | None:
    """The final answer of a rationale or generation, canonical for ``kind``; None if it has none."""
    if kind == "number":
        candidates = _NUMBER_STATEMENT.findall(text) or _ANY_NUMBER.findall(text)
        for raw in reversed(candidates):
            value = parse_number(raw)
            if value is not None:
                return format_number(value)
        return None
    if kind == "choice":
        stated = _CHOICE_STATEMENT.findall(text)
        if stated:
            return stated[-1].upper()
        loose = [a or b for a, b in _ANY_CHOICE.findall(text)]
        return loose[-1] if loose else None
    if kind == "boolean":
        found = _BOOLEAN_STATEMENT.findall(text) or _ANY_BOOLEAN.findall(text)
        return _BOOLEAN_WORDS[found[-1].lower()] if found else None
    stated = _MATH_STATEMENT.findall(text)
    candidate = stated[-1] if stated else text[-MAX_MATH_CHARS:]
    return candidate.strip() if _math_parse(candidate) else None


def answers_match(predicted: str | None, gold: str, kind: AnswerKind | None = None) -> bool:
    """Is ``predicted`` (as :func:`extract_answer` returns it) the same answer as ``gold``?"""
    if predicted is None:
        return False
    kind = kind or answer_kind(gold)
    if kind == "number":
        p, g = parse_number(predicted), parse_number(gold)
        return p is not None and g is not None and abs(float(p) - float(g)) <= 1e-6 * max(1.0, abs(float(g)))
    if kind in ("choice", "boolean"):
        return predicted.strip().lower() == canonical_answer(gold).lower()
    if kind == "math":
        from math_verify import verify

        gold_parsed, pred_parsed = _math_parse(gold), _math_parse(predicted)
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None))
    return False


def _math_parse(text: str) -> list:
    if len(text) > MAX_MATH_CHARS:
        return []
    from math_verify import parse

    expr = text if "$" in text or "\\" in text else f"${text}$"
    return parse(expr, parsing_timeout=None)
