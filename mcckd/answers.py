"""Final-answer extraction and comparison, shared by the judge (teacher rationales) and evaluation
(student generations), so both count "correct" the same way.

Extraction prefers the last explicit answer statement ("the answer is 18", as the canonical answer
sentence and the MCC-KD data write it) and falls back to the last number in the text, the usual
convention for chain-of-thought arithmetic. Numbers are compared by value (``1,000`` = ``1000.0``,
``$5`` = ``5``, ``1/2`` = ``0.5``).
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?(?:\s?/\s?\d+)?%?"
_ANSWER_STATEMENT = re.compile(r"answer\s+is\s*:?\s*(" + _NUMBER + ")", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


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


def extract_answer(text: str) -> str | None:
    """The final answer of a rationale or generation as canonical text, or None if it has none."""
    statements = _ANSWER_STATEMENT.findall(text)
    candidates = statements or _ANY_NUMBER.findall(text)
    for raw in reversed(candidates):
        value = parse_number(raw)
        if value is not None:
            return format_number(value)
    return None


def answers_match(predicted: str | None, gold: str) -> bool:
    """Numeric equality when both sides are numbers, else exact text equality ignoring case."""
    if predicted is None:
        return False
    p, g = parse_number(predicted), parse_number(gold)
    if p is not None and g is not None:
        return abs(float(p) - float(g)) <= 1e-6 * max(1.0, abs(float(g)))
    return predicted.strip().lower() == gold.strip().lower()
