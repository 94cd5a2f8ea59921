"""Answer extraction and comparison, shared by the judge and evaluation."""

from __future__ import annotations

import pytest

from mcckd.answers import answers_match, extract_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15 + 11 = 26. 26 + 39 = 65. The answer is 65.", "65"),
        ("So it costs $1.5 * 8 = $12\nTherefore, the answer is 12 .", "12"),
        ("The answer is 1,250 apples and 3 pears.", "1250"),
        ("She has 3 left, then 7 more, so 10", "10"),  # no statement: the last number
        ("The answer is 3/4.", "0.75"),
        ("The answer is 50%.", "0.5"),
        ("The answer is -4.", "-4"),
        ("No numbers here at all.", None),
    ],
)
def test_extract_answer(text: str, expected: str | None):
    assert extract_answer(text) == expected


def test_last_statement_wins_over_later_numbers():
    assert extract_answer("The answer is 8. Check: 8 + 1 = 9") == "8"


@pytest.mark.parametrize(
    ("predicted", "gold", "same"),
    [("12", "12.0", True), ("1250", "1,250", True), ("0.5", "1/2", True), ("7", "8", False), (None, "3", False)],
)
def test_answers_match(predicted, gold, same):
    assert answers_match(predicted, gold) is same


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("Cats could open doors. So the answer is (C).", "choice", "C"),
        ("The answer is c", "choice", "C"),
        ("Only doors fit. C. open doors", "choice", "C"),
        ("It rains in Paris. So the answer is yes.", "boolean", "yes"),
        ("That claim is false.", "boolean", "no"),
        ("Therefore the answer is \\frac{3}{4}.", "math", "\\frac{3}{4}"),
        ("Nothing to see", "choice", None),
    ],
)
def test_extract_other_kinds(text, kind, expected):
    assert extract_answer(text, kind) == expected


@pytest.mark.parametrize(
    ("predicted", "gold", "same"),
    [
        ("C", "C", True),
        ("B", "C", False),
        ("yes", "True", True),
        ("no", "yes", False),
        ("\\frac{3}{4}", "0.75*1", True),
        ("2x + x^2", "x^2+2x", True),
        ("x^2", "x^3", False),
    ],
)
def test_match_other_kinds(predicted, gold, same):
    assert answers_match(predicted, gold) is same


@pytest.mark.parametrize(("gold", "kind"), [("18", "number"), ("C", "choice"), ("no", "boolean"), ("x^2+1", "math")])
def test_answer_kind_from_gold(gold, kind):
    from mcckd.answers import answer_kind

    assert answer_kind(gold) == kind


@pytest.mark.parametrize("gold", ["", "n/a", "banana"])
def test_labels_that_are_not_answers(gold):
    from mcckd.answers import answer_kind

    assert answer_kind(gold) is None
