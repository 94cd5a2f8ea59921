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
