"""Reading the committed answer and comparing it with gold: the forms real teachers write."""

from __future__ import annotations

import pytest

from mcckd.answers import answer_kind, answers_match, extract_answer, read_answer

CSQA = "What could cats do if taller? Answer Choices:\nA. annoy\nB. eat meat\nC. open doors\nD. need food\nE. jog"
BAKER = "Baker made 120 cakes. He bought 103 new cakes and sold 86 cakes. How many cakes does he have?"


@pytest.mark.parametrize(
    ("text", "question", "expected"),
    [
        ("15 + 11 = 26. 26 + 39 = 65. The answer is 65.", "", "65"),
        ("So it costs $1.5 * 8 = $12\nTherefore, the answer is 12 .", "", "12"),
        ("The answer is 1,250 apples and 3 pears.", "", "1250"),
        ("She has 3 left, then 7 more, so 10", "", "10"),
        ("The answer is 3/4.", "", "0.75"),
        ("The answer is 50%.", "", "50%"),
        ("The answer is -4.", "", "-4"),
        ("The answer is −4.", "", "-4"),  # Unicode minus
        ("No numbers here at all.", "", None),
        # the conclusion restates other quantities of the problem
        ("Baker still has a total of 190 cakes after he bought 103 new cakes and sold 86 cakes.", BAKER, "190"),
        # a trailing remark follows the conclusion
        ("15 / 3 = 5, so there are 5 eggs per group. The 4 marbles are not needed.", "15 eggs, 4 marbles", "5"),
        ("Each group will have 5 eggs. The 4 marbles do not impact the distribution of eggs.", "", "5"),
        # a parenthetical follows the answer
        ("So there are 143 (11 x 13) chairs.", "11 rows of 13 chairs", "143"),
        ("Therefore, 30 pounds (total) - 11 pounds (dad's share) = 19 pounds (Marco's share).", "", "19"),
        # self-correction after a first answer
        ("The answer is 12. Wait, I made a mistake: 15 - 4 = 11, so Tom has 11 apples.", "", "11"),
        ("So the answer is 12. Actually, let me recalculate: 15 - 3 = 12. The answer is 12.", "", "12"),
        # a check after the conclusion
        ("The answer is 8. Check: 8 + 1 = 9", "", "8"),
        ("Therefore, Nell gave 133 cards.\n\nTo check:\n528 - 252 = 276", "", "133"),
        # LaTeX, words, mixed numbers, scientific notation, markers
        (r"So the result is \boxed{\frac{3}{4}}.", "", "0.75"),
        (r"The final answer is $\dfrac{7}{2}$.", "", "3.5"),
        (r"Thus $x = \boxed{2\frac{1}{2}}$", "", "2.5"),
        ("The answer is seven.", "", "7"),
        ("She has twenty-five apples left.", "", "25"),
        ("So he walked 2 1/2 miles.", "", "2.5"),
        ("The population is 1.2 x 10^5 people.", "", "120000"),
        ("The population is 3.4e3.", "", "3400"),
        ("The answer is 10⁵.", "", "100000"),
        ("#### 72", "", "72"),
        ("Final answer:\n42", "", "42"),
        ("Answer: $1,234.50", "", "1234.5"),
        ("Ｔhe answer is １２.", "", "12"),  # full-width digits
        ("Jesse's room is 24 square feet (2 x 12), which means she needs 6 tiles (24 / 4).", "", "6"),
        ("So each of the 2 groups will contain exactly 145 bananas.", "290 bananas in 2 groups", "145"),
        ("Thus, there are 100 - 68 = 32 more wrappers than bottle caps.", "", "32"),
    ],
)
def test_read_number(text, question, expected):
    assert extract_answer(text, "number", question) == expected


@pytest.mark.parametrize(
    ("text", "alternatives"),
    [
        ("The answer is 12 or 14.", ("12", "14")),
        ("The answer is 12. The answer is 14.", ("12", "14")),
        ("So the answer is (B) or (D).", ("B", "D")),
    ],
)
def test_two_committed_answers_are_ambiguous(text, alternatives):
    kind = "choice" if "(B)" in text else "number"
    reading = read_answer(text, kind)
    assert reading.status == "ambiguous" and reading.answer is None and reading.alternatives == alternatives


def test_a_corrected_statement_is_not_ambiguous():
    reading = read_answer("The answer is 12. Oops, that's wrong: 7 + 7 = 14. The answer is 14.")
    assert reading.status == "answered" and reading.answer == "14"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Cats could open doors. So the answer is (C).", "C"),
        ("The answer is c", "C"),
        ("Only doors fit. C. open doors", "C"),
        ("Answer: B", "B"),
        ("the correct choice is C. open doors", "C"),
        ("Therefore, the best option is open doors.", "C"),
        ("So the answer is C; A and B are less likely.", "C"),
        ("**Answer: (C) open doors**", "C"),
        (r"\boxed{C}", "C"),
        ("C. Taller cats reach handles, unlike (A) annoy or (E) jog.", "C"),
        ("I first thought B, but actually taller cats reach handles, so the answer is C.", "C"),
        ("Nothing to see", None),
    ],
)
def test_read_choice(text, expected):
    assert extract_answer(text, "choice", CSQA) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It rains in Paris. So the answer is yes.", "yes"),
        ("That claim is false.", "no"),
        ("Yes, water is wet.", "yes"),
    ],
)
def test_read_boolean(text, expected):
    assert extract_answer(text, "boolean") == expected


def test_read_math():
    assert extract_answer("Therefore the answer is \\frac{3}{4}.", "math") == "\\frac{3}{4}"


@pytest.mark.parametrize(
    ("predicted", "gold", "same"),
    [
        ("12", "12.0", True),
        ("1250", "1,250", True),
        ("0.5", "1/2", True),
        ("50%", "50", True),
        ("50%", "0.5", True),
        ("50", "50%", True),
        ("7", "8", False),
        (None, "3", False),
        ("C", "C", True),
        ("B", "C", False),
        ("yes", "True", True),
        ("no", "yes", False),
        ("\\frac{3}{4}", "0.75*1", True),
        ("2x + x^2", "x^2+2x", True),
        ("x^2", "x^3", False),
    ],
)
def test_answers_match(predicted, gold, same):
    assert answers_match(predicted, gold) is same


@pytest.mark.parametrize(
    ("gold", "kind"), [("18", "number"), ("$1,250", "number"), ("C", "choice"), ("no", "boolean"), ("x^2+1", "math")]
)
def test_answer_kind_from_gold(gold, kind):
    assert answer_kind(gold) == kind


@pytest.mark.parametrize("gold", ["", "n/a", "banana", "nan"])
def test_labels_that_are_not_answers(gold):
    assert answer_kind(gold) is None
