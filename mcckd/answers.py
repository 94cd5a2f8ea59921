"""Reading the final answer a rationale commits to, and comparing it with the gold answer.

The judge (teacher rationales) and evaluation (student generations) both call :func:`read_answer`,
so both count "correct" the same way. The gold answer decides the kind: a number (SVAMP, GSM8K,
ASDiv), a choice letter (CommonsenseQA "Answer Choices: A. ... E."), yes/no or true/false
(StrategyQA), or else a maths expression, compared for equivalence by `math-verify`.

A careful grader reads the *committed* answer, which is not simply the last number in the text:

1. Explicit statements win: ``\\boxed{}``, ``####``, "Answer: C", "the (final/correct) answer is",
   "the correct choice is C. bank". The last one counts; when two statements disagree and no
   self-correction ("wait", "actually", "I made a mistake") lies between them (a later "Final
   answer: D" after "so the answer is A" included), or one statement offers alternatives ("12 or
   14", "B or D"), the reading is *ambiguous*, its own verdict. An answer to a sub-question ("the
   answer to step 1 is 5") is no rival to the final one.
   A self-correction after the last statement moves the conclusion to the corrected text.
2. Without a statement, the conclusion is the last sentence that commits to something: trailing
   remarks ("The 4 marbles are not needed.", checks, notes, questions) are skipped. In that
   sentence parentheticals are ignored ("143 (11 x 13) chairs"), an equation's result wins
   ("100 - 68 = 32 more"), and otherwise the main clause's quantity that the question did not
   give ("190 cakes after he bought 103 and sold 86").

Numbers are read in every usual form: thousands separators, decimals, fractions, mixed numbers,
percentages, currency, scientific notation, number words (`text2num`), and LaTeX (``\\frac``,
``\\dfrac``, ``$...$``), which goes to `math-verify`; everything else is plain regular expressions,
fast enough for millions of rationales (``benchmarks/judge_select.py``).
"""

from __future__ import annotations

import itertools
import logging
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

AnswerKind = Literal["number", "choice", "boolean", "math"]
ReadingStatus = Literal["answered", "no_answer", "ambiguous"]

# math-verify hands expressions to sympy; a bounded length keeps one pathological rationale from
# stalling a whole batch (its own signal-based timeout only works on the main thread, so it is off).
MAX_MATH_CHARS = 300
# It warns on every call that its timeout is off; we bound inputs instead (above).
logging.getLogger("math_verify").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Reading:
    """What a rationale commits to: one answer, none, or several different ones (ambiguous)."""

    answer: str | None
    status: ReadingStatus
    alternatives: tuple[str, ...] = ()  # the different answers of an ambiguous reading
    how: str = ""  # where the answer was found: "statement", "correction", "conclusion", "opening"


NO_ANSWER = Reading(None, "no_answer")


# ----------------------------------------------------------------------------------------------
# Normalisation: one plain-text form for Unicode, Markdown and simple LaTeX.

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_SUPERSCRIPT_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u2060\ufeff]")
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LATEX_PLAIN = [
    (re.compile(r"\\[$%]"), lambda m: m.group(0)[1]),
    (re.compile(r"\\[,;:! ]|\\(?:left|right|displaystyle)\b"), lambda m: ""),
    (re.compile(r"\{,\}"), lambda m: ","),
    (re.compile(r"\\(?:times|cdot)\b"), lambda m: "*"),
    (re.compile(r"\\div\b"), lambda m: "/"),
    (re.compile(r"\\(?:approx|simeq)\b"), lambda m: "="),
]


def normalize(text: str) -> str:
    """Plain text a regex can read: NFKC digits, ASCII minus, no control or zero-width characters,
    no Markdown emphasis, superscript powers as ``^``, LaTeX text commands unwrapped."""
    text = _SUPERSCRIPT_RUN.sub(lambda m: "^" + m.group(0).translate(_SUPERSCRIPTS), text)
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2044", "/").replace("\u2212", "-").replace("\u2013", "-").replace("\u00d7", "*")
    text = text.replace("\u00f7", "/").replace("\u2217", "*").replace("\u22c5", "*")
    text = _CONTROL.sub(" ", text)
    text = text.replace("**", "").replace("__", "").replace("`", "")
    text = _LATEX_TEXT.sub(r"\1", text)
    for pattern, repl in _LATEX_PLAIN:
        text = pattern.sub(repl, text)
    return text


# ----------------------------------------------------------------------------------------------
# Numbers.

_CURRENCY = r"(?:[$€£¥₹]|Rs\.?\s?|USD\s?|INR\s?)"
_NUMBER = re.compile(
    r"(?<![\w.,/])"
    r"(?P<neg>-\s?)?" + _CURRENCY + r"?(?P<neg2>-)?"
    r"(?:(?P<whole>\d+)\s+(?P<mnum>\d+)\s?/\s?(?P<mden>\d+)(?![\d.])"  # mixed number 2 1/2
    r"|(?P<num>\d+)\s?/\s?(?P<den>\d+)(?![\d.])"  # fraction 3/4
    r"|(?P<dec>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+))"  # 1,250.5 or 12 or .5
    r"(?:\s?(?:[eE](?P<exp>[+-]?\d+)|[*x]\s?10\s?\^\s?\{?(?P<exp2>[+-]?\d+)\}?)|\^\{?(?P<pow>\d{1,2})\}?)?"
    r"(?P<pct>\s?%|\s?percent\b)?"
    r"(?!\d|(?:st|nd|rd|th)\b|[,.]\d)"
)
_LATEX_NUMBER = re.compile(r"\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}|\\sqrt|\\pi|\^\{")


@dataclass(frozen=True)
class _Number:
    value: Fraction
    percent: bool
    start: int
    end: int

    @property
    def text(self) -> str:
        return format_number(self.value) + ("%" if self.percent else "")


def _number_from_match(m: re.Match) -> _Number | None:
    try:
        if m["whole"] is not None:
            value = int(m["whole"]) + Fraction(int(m["mnum"]), int(m["mden"]))
        elif m["num"] is not None:
            value = Fraction(int(m["num"]), int(m["den"]))
        elif "." not in m["dec"]:
            value = Fraction(int(m["dec"].replace(",", "")))
        else:
            value = Fraction(m["dec"].replace(",", ""))
    except ZeroDivisionError:
        return None
    exp = m["exp"] or m["exp2"]
    if exp is not None:
        if abs(int(exp)) > 30:
            return None
        value *= Fraction(10) ** int(exp)
    if m["pow"] is not None:
        value **= int(m["pow"])
    if m["neg"] or m["neg2"]:
        value = -value
    return _Number(value, m["pct"] is not None, m.start(), m.end())


def _latex_values(text: str) -> list[_Number]:
    """Numbers written in LaTeX (``\\frac{3}{4}``, ``2\\frac{1}{2}``), read by math-verify."""
    out = []
    for m in re.finditer(r"(?:\d+\s*)?\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}", text):
        value = _rational(m.group(0))
        if value is not None:
            out.append(_Number(value, False, m.start(), m.end()))
    return out


def _rational(latex: str) -> Fraction | None:
    parsed = _math_parse(f"${latex}$")
    if not parsed:
        return None
    try:
        import sympy

        expr = sympy.nsimplify(parsed[0])
        return Fraction(int(expr.p), int(expr.q)) if expr.is_Rational else None
    except (TypeError, ValueError, AttributeError):
        return None


def numbers_in(text: str) -> list[_Number]:
    """Every number in already-normalised ``text``, in order of appearance."""
    found = [n for m in _NUMBER.finditer(text) if (n := _number_from_match(m)) is not None]
    if "\\" in text and _LATEX_NUMBER.search(text):
        latex = _latex_values(text)
        found = [n for n in found if not any(x.start <= n.start < x.end for x in latex)] + latex
        found.sort(key=lambda n: n.start)
    return found


def _words_to_digits(text: str) -> str:
    """ "twenty-five" -> "25" (text2num), also single small numbers ("one", "seven")."""
    if not re.search(r"[a-z]", text, re.IGNORECASE):
        return text
    from text_to_num import alpha2digit

    return alpha2digit(text, "en", threshold=0)


def parse_number(text: str) -> Fraction | None:
    """The value of a whole answer string ("1,250", "$3.50", "2 1/2", "50%"), or None."""
    t = normalize(text).strip().rstrip(".")
    nums = numbers_in(t)
    if len(nums) != 1 or t[: nums[0].start].strip() or t[nums[0].end :].strip():
        return None
    n = nums[0]
    return n.value / 100 if n.percent else n.value


def format_number(value: Fraction) -> str:
    """Canonical text of a number: integers without decimals, others as a short decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


# ----------------------------------------------------------------------------------------------
# Sentences, statements, corrections and remarks.

_STATEMENT = re.compile(
    r"\\boxed\s*\{|\\fbox\s*\{|#{3,}\s*"
    r"|\b(?:final\s+)?answers?(?P<scope>\s+(?:to|for|of)\s+[^.:\n]{1,60}?)?\s*(?:is|are|would\s+be|will\s+be|should\s+be"
    r"|must\s+be|=|:|-(?=\s))\s*:?\s*"
    r"|\bfinal\s+answer\b\s*[:=-]?\s*"
    r"|\b(?:correct|right|best|final|most\s+(?:likely|appropriate|suitable|logical|reasonable))\s+"
    r"(?:answer|choice|option|response)\s+(?:here\s+)?(?:is|would\s+be|will\s+be|should\s+be|=|:)\s*:?\s*"
    r"|\b(?:choice|option)\s*:\s*"
    r"|\bI\s+(?:would\s+|will\s+)?(?:choose|pick|select|go\s+with)\s+",
    re.IGNORECASE,
)
_CORRECTION = re.compile(
    r"\b(?:wait|actually|correction|oops|mistake|miscalculat\w*|recalculat\w*|re-?calculat\w*|let\s+me\s+re\w*"
    r"|let'?s\s+re\w*|on\s+second\s+thought|I\s+was\s+wrong|(?:that|this)\s+(?:is|was|'s)\s+(?:not\s+right|wrong"
    r"|incorrect))\b",
    re.IGNORECASE,
)
_REMARK = re.compile(
    r"\b(?:not\s+(?:needed|necessary|relevant|required|used|important|asked)|irrelevant|unnecessary|doesn'?t\s+matter"
    r"|does\s+not\s+matter|extra\s+information|distract\w*|note\b|check\w*|verif\w*|double-check\w*"
    r"|don'?t\s+need|do\s+not\s+need|no\s+need|nothing\s+to\s+do\s+with|unrelated|not\s+related"
    r"|(?:does|do|did|is|are|was|were|will|would)\s*(?:not|n't)\s+(?:affect|impact|change|matter|count|involve|factor)\w*)",
    re.IGNORECASE,
)
# Openers of text that only supports a conclusion already given: a check, an alternative method,
# an explanation after the answer.
_VERIFICATION = re.compile(
    r"(?:^|\n|(?<=[.!?])\s)\s*(?:to\s+(?:check|verify|double-check|confirm)|let'?s\s+(?:check|verify|double-check|confirm)"
    r"|let\s+us\s+(?:check|verify)|we\s+can\s+(?:check|verify|double-check|confirm)|check(?:ing)?\s*:"
    r"|checking\s+(?:our|the|my|this)\s+(?:work|answer|result|solution)|verif(?:y|ication)\s*:|double-check\s*:"
    r"|sanity\s+check|alternatively\b|another\s+way\s+(?:to|of)\b|explanation\s*:)",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(?:cannot|can'?t|can\s+not|unable\s+to|impossible\s+to|not\s+possible\s+to)\s+(?:be\s+)?(?:determined?|answer(?:ed)?"
    r"|tell|know|say|pick|choose|decide|solve[d]?|find|calculated?|computed?)\b|\bnot\s+enough\s+information"
    r"|\b(?:without|need|requires?)\s+(?:more|additional)\s+information|\binsufficient\s+information"
    r"|\bnone\s+of\s+the\s+(?:given\s+|listed\s+)?(?:options|choices|answers)|\b(?:revise|clarify|rephrase)\s+the\s+question"
    r"|\bno\s+(?:valid|correct)\s+answer",
    re.IGNORECASE,
)
# A text that stops on one of these words was cut off before it concluded.
_DANGLING = re.compile(
    r"\b(?:is|are|was|were|the|a|an|of|to|and|or|but|that|which|with|for|by|be|between|because|as|than|from|into|so)\s*$",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+|(?<=[.!?])$")
_CLAUSE_END = re.compile(r"[.!?;](?=\s|$)|\n")
_SUBORDINATE = re.compile(
    r",(?=\s)|\b(?=(?:after|because|since|as|when|if|given|while|before|from|by|which|where|whereas|than|leaving|out\s+of)\b)",
    re.IGNORECASE,
)
_SUBORDINATOR_START = re.compile(
    r"\s*(?:after|because|since|as|when|if|given|while|before|from|by|which|where|whereas|than|leaving|out\s+of)\b",
    re.IGNORECASE,
)
# A letter named as the answer after the fact: "making B the best choice", "(C) is correct".
_CHOICE_NAMED_BEST = (
    r"(?<![\w'])\(?([{letters}])\)?\s+(?:is\s+|would\s+be\s+|seems\s+(?:to\s+be\s+)?)?(?:the\s+)?(?:best|correct|right"
    r"|most\s+(?:likely|appropriate|suitable|logical))(?:\s+(?:answer|choice|option))?\b"
)
_CONCLUDING = re.compile(r"\b(?:so|therefore|thus|hence|best|most|likely|answer)\b", re.IGNORECASE)
_ALTERNATIVE = re.compile(r"^[\s).,:*]*(?:or|and/or|/)(?:\s+(?:maybe|perhaps|possibly))?[\s(.,:*]*$", re.IGNORECASE)


def sentences(text: str) -> list[tuple[int, str]]:
    """(start offset, sentence) pairs; a decimal point ("1.5") does not end a sentence."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        piece = text[start : m.start()]
        if piece.strip():
            out.append((start, piece))
        start = m.end()
    if text[start:].strip():
        out.append((start, text[start:]))
    return out


def final_statement_start(text: str) -> int | None:
    """Where the last sentence starts if it states the answer ("Therefore, the answer is 18 .",
    "#### 18", "Answer: C"), so it can be replaced by the canonical sentence; else None."""
    parts = sentences(text)
    if parts and _STATEMENT.search(parts[-1][1]):
        return parts[-1][0]
    return None


def _without_parentheticals(sentence: str) -> str:
    """ "143 (11 x 13) chairs" -> "143 chairs"; kept when nothing else would remain."""
    stripped = re.sub(r"\s*\([^()]*\)|\s*\[[^\[\]]*\]", " ", sentence)
    return stripped if stripped.strip() else sentence


def _braced(text: str, start: int) -> str:
    """The content of the brace group opening just before ``start`` (``\\boxed{...}`` with nesting)."""
    depth = 1
    for i in range(start, min(len(text), start + MAX_MATH_CHARS)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start : start + MAX_MATH_CHARS]


def _statement_clause(text: str, m: re.Match) -> str:
    """The words that a statement marker introduces: to the end of its sentence, or the next line."""
    if m.group(0).rstrip().endswith("{"):
        return _braced(text, m.end())
    rest = text[m.end() : m.end() + 400]
    end = _CLAUSE_END.search(rest)
    clause = rest[: end.start()] if end else rest
    if not clause.strip() and end and rest[end.start()] == "\n":  # "Final answer:\n12"
        nxt = rest[end.end() :]
        line_end = _CLAUSE_END.search(nxt)
        clause = nxt[: line_end.start()] if line_end else nxt
    return clause


# ----------------------------------------------------------------------------------------------
# Candidates of each kind in a piece of text.


@dataclass(frozen=True)
class _Candidate:
    answer: str
    start: int
    end: int


def _question_numbers(question: str) -> set[Fraction]:
    return {n.value for n in numbers_in(_words_to_digits(normalize(question)))}


def _number_candidates(text: str) -> list[_Candidate]:
    return [_Candidate(n.text, n.start, n.end) for n in numbers_in(_words_to_digits(text))]


_INNER_CONCLUSION = re.compile(
    r"\b(?:which|this|that)\s+means(?:\s+that)?|\bmeaning(?:\s+that)?|,\s*so\b|\b(?:therefore|thus|hence)\b"
    r"|\bresulting\s+in|\bfor\s+a\s+total\s+of|\bgiving\s+(?:us|a\s+total\s+of)?",
    re.IGNORECASE,
)


def _pick_number(clause: str, question_numbers: set[Fraction]) -> str | None:
    """The quantity a concluding clause commits to (see the module docstring)."""
    clause = _words_to_digits(_without_parentheticals(clause))
    inner = [m for m in _INNER_CONCLUSION.finditer(clause) if m.start() > 0]
    if inner and numbers_in(clause[inner[-1].end() :]):  # "24 square feet, which means 6 tiles"
        clause = clause[inner[-1].end() :]
    eq = max(clause.rfind("="), clause.lower().rfind("equals"))
    if eq != -1:
        after = numbers_in(clause[eq:])
        if after:
            return after[0].text
    main_parts = [p for p in _split_clauses(clause) if not _SUBORDINATOR_START.match(p)]
    for pool in (main_parts, [clause]):
        nums = [n for part in pool for n in numbers_in(part)]
        if nums:
            new = [n for n in nums if n.value not in question_numbers]
            return (new or nums)[0].text
    return None


def _split_clauses(sentence: str) -> list[str]:
    parts, start = [], 0
    for m in _SUBORDINATE.finditer(sentence):
        if m.start() > start:
            parts.append(sentence[start : m.start()])
        start = m.end() if m.group(0).startswith(",") else m.start()
    parts.append(sentence[start:])
    return [p for p in parts if p.strip()]


_CHOICE_LIST = re.compile(r"(?:^|\n|\s)\(?([A-J])[.):]\s*([^\n]+?)(?=\s+\(?[A-J][.):]\s|\n|$)")


@lru_cache(maxsize=4096)
def choice_options(question: str) -> dict[str, str]:
    """{letter: option text} from "Answer Choices:\\nA. annoy\\nB. ..." or "(A) annoy (B) ..."."""
    marker = re.search(r"answer\s+choices\s*:|options\s*:|choices\s*:", question, re.IGNORECASE)
    tail = question[marker.end() :] if marker else question
    options = {}
    for letter, option in _CHOICE_LIST.findall(tail):
        options.setdefault(letter, option.strip().rstrip(".").strip())
    letters = sorted(options)
    # Only a run A, B, C, ... is an options list (not a stray "C." in the question's prose).
    return options if letters and letters == [chr(ord("A") + i) for i in range(len(letters))] else {}


CandidateMode = Literal["strict", "sentence", "statement"]


def _choice_candidates(text: str, options: dict[str, str], mode: CandidateMode) -> list[_Candidate]:
    """Letters a piece of text names as answers: "(C)", "C.", "C)", "option C", an option's own text
    ("open doors"); in a sentence also a lone capital before punctuation ("so it is C"), and in a
    statement's clause any lone letter ("the answer is C or D", "the answer is c")."""
    letters = "".join(options) or "ABCDEFGHIJ"
    found: list[_Candidate] = []
    forms = [
        rf"\(([{letters}])\)",
        rf"\b([{letters}])[.):](?=\s|$)",
        rf"\b(?:option|choice|answer)\s+\(?([{letters}])\b",
        rf"\{{([{letters}])\}}",
    ]
    if mode == "sentence":
        forms.append(rf"(?<![\w'])([{letters}])(?![\w'])(?=\s*(?:[.,;!]|$))")
    if mode == "statement":
        # any lone letter, but not the article "A" or the pronoun "I" before a word ("a bank")
        forms += [
            rf"(?<![\w'])([{letters}])(?![\w'])(?!\s+(?!or\b|and\b)[a-z])",
            rf"(?<![\w'])([{letters.lower()}])(?=\s*(?:[.,;!]|$|\s+or\b))",
        ]
    for form in forms:
        for m in re.finditer(form, text):
            found.append(_Candidate(m.group(1).upper(), m.start(), m.end()))
    lowered = text.lower()
    for letter, option in options.items():
        o = option.lower()
        if len(o) >= 2:
            for m in re.finditer(rf"(?<!\w){re.escape(o)}(?!\w)", lowered):
                # a shorter option inside a longer one that also matches ("bank" in "river bank") is not a mention
                if not any(len(p) > len(o) and o in p.lower() and p.lower() in lowered for p in options.values()):
                    found.append(_Candidate(letter, m.start(), m.end()))
    found.sort(key=lambda c: c.start)
    # "(C)" also matches as a lone "C": one mention, not two
    return [
        c
        for i, c in enumerate(found)
        if not (i and c.answer == found[i - 1].answer and c.start - found[i - 1].start < 3)
    ]


_BOOLEAN_WORDS = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
_BOOLEAN = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)


def _boolean_candidates(text: str) -> list[_Candidate]:
    return [_Candidate(_BOOLEAN_WORDS[m.group(1).lower()], m.start(), m.end()) for m in _BOOLEAN.finditer(text)]


# ----------------------------------------------------------------------------------------------
# Reading.


class _Reader:
    """Reads one text for one answer kind; holds what the kind needs (options, question numbers)."""

    def __init__(self, kind: AnswerKind, question: str) -> None:
        self.kind = kind
        self.options = choice_options(question) if kind == "choice" else {}
        self.question_numbers = _question_numbers(question) if kind == "number" and question else set()

    def candidates(self, text: str, mode: CandidateMode = "sentence") -> list[_Candidate]:
        if self.kind == "number":
            return _number_candidates(text)
        if self.kind == "choice":
            return _choice_candidates(text, self.options, mode)
        if self.kind == "boolean":
            return _boolean_candidates(text)
        return [_Candidate(text.strip(), 0, len(text))] if text.strip() and _math_parse(text) else []

    def statement_answer(self, clause: str) -> Reading | None:
        """The answer a statement's clause gives; ambiguous when it offers alternatives."""
        if self.kind == "math":
            clause = clause.strip().strip("$").strip().rstrip(".").strip()
            return Reading(clause, "answered", how="statement") if clause and _math_parse(clause) else None
        basis = _without_parentheticals(clause) if self.kind == "number" else clause
        found = self.candidates(basis, "statement")
        picked = _pick_number(clause, set()) if self.kind == "number" else (found[0].answer if found else None)
        if picked is None:
            return None
        if self.kind == "number":
            basis = _words_to_digits(basis)  # the text the candidates' offsets refer to
        for a, b in itertools.pairwise(found):
            if a.answer != b.answer and _ALTERNATIVE.match(basis[a.end : b.start]):
                return Reading(None, "ambiguous", (a.answer, b.answer), "statement")
        return Reading(picked, "answered", how="statement")

    def conclusion(self, text: str) -> Reading:
        """The committed answer of text without (or after) statements: its last committing sentence."""
        for m in reversed(list(_VERIFICATION.finditer(text))):  # "To check: ..." after the conclusion
            if self.candidates(text[: m.start()]):
                text = text[: m.start()]
                break
        parts = sentences(text)
        if self.kind == "choice" and parts:
            opening = re.match(r"\s*\(?([A-J])[.):](?=\s|$)", parts[0][1])
            if opening and (not self.options or opening.group(1) in self.options):
                late = [p for p in parts[1:] if _CONCLUDING.search(p[1]) and self.candidates(p[1], "strict")]
                if not late:
                    return Reading(opening.group(1), "answered", how="opening")
        if _DANGLING.search(text):
            return NO_ANSWER  # cut off mid-sentence, before any answer statement
        for _, sentence in reversed(parts):
            if _REFUSAL.search(sentence):
                return NO_ANSWER  # it concludes that it cannot answer
            if sentence.rstrip().endswith("?") or _REMARK.search(sentence) or self._rules_out(sentence):
                continue
            if self.kind == "number":
                picked = _pick_number(sentence, self.question_numbers)
                if picked is not None:
                    return Reading(picked, "answered", how="conclusion")
                continue
            found = self.candidates(sentence)
            if found:
                if len({c.answer for c in found}) > 1 and self.kind == "choice":
                    return self._choice_in_mixed_sentence(sentence, found)
                return Reading(found[-1].answer, "answered", how="conclusion")
        return NO_ANSWER

    def _rules_out(self, sentence: str) -> bool:
        """A choice sentence that only dismisses options ("Option E is tempting but wrong")."""
        return self.kind == "choice" and bool(
            re.search(
                r"\b(?:wrong|incorrect|unlikely|less likely|not\s+(?:the|a|correct|right)|rule\s+out|eliminat)",
                sentence,
                re.I,
            )
        )

    def _choice_in_mixed_sentence(self, sentence: str, found: list[_Candidate]) -> Reading:
        cue = _CONCLUDING.search(sentence)
        after = [c for c in found if cue and c.start >= cue.start()]
        if after and len({c.answer for c in after}) == 1:
            return Reading(after[0].answer, "answered", how="conclusion")
        return Reading(None, "ambiguous", tuple(dict.fromkeys(c.answer for c in found)), "conclusion")

    def read(self, text: str) -> Reading:
        text = normalize(text)
        statements = []
        for m in _STATEMENT.finditer(text):
            reading = self.statement_answer(_statement_clause(text, m))
            if reading is not None:
                statements.append((m.start(), m.end(), m["scope"] is not None, reading))
        if self.kind == "choice":
            letters = "".join(self.options) or "ABCDEFGHIJ"
            for m in re.finditer(_CHOICE_NAMED_BEST.format(letters=letters), text, re.IGNORECASE):
                statements.append((m.start(), m.end(), False, Reading(m.group(1).upper(), "answered", how="statement")))
            statements.sort(key=lambda st: st[0])
        if not statements:
            return self.conclusion(text)
        start, end, _, last = statements[-1]
        correction = _last_correction(text, end)
        if correction is not None:
            corrected = self.conclusion(text[correction:])
            if corrected.status != "no_answer":
                return Reading(corrected.answer, corrected.status, corrected.alternatives, "correction")
        if last.status == "ambiguous":
            return last
        # Two different plain statements with no self-correction between them: which one is meant?
        # An earlier answer to a sub-question ("the answer to step 1 is 5") is not a rival.
        for prev_start, _, scoped, prev in reversed(statements[:-1]):
            if prev.answer == last.answer or prev.status != "answered" or scoped:
                continue
            if _last_correction(text[:start], prev_start) is None:
                return Reading(None, "ambiguous", (prev.answer, last.answer), "statement")
            break
        return last


def _last_correction(text: str, after: int) -> int | None:
    """Offset just past the last self-correction cue at or after ``after``, or None."""
    last = None
    for m in _CORRECTION.finditer(text, after):
        last = m.end()
    return last


def read_answer(text: str, kind: AnswerKind = "number", question: str = "") -> Reading:
    """The answer ``text`` commits to, canonical for ``kind``; ``question`` gives the choices of a
    multiple-choice question and the quantities a word problem states."""
    if not text or not text.strip():
        return NO_ANSWER
    return _reader(kind, question).read(text)


@lru_cache(maxsize=4096)
def _reader(kind: AnswerKind, question: str) -> _Reader:
    """One reader per question: a question's rationales share its options and stated quantities."""
    return _Reader(kind, question)


def extract_answer(text: str, kind: AnswerKind = "number", question: str = "") -> str | None:
    """The committed answer, or None when there is none or it is ambiguous."""
    return read_answer(text, kind, question).answer


# ----------------------------------------------------------------------------------------------
# Gold answers and comparison.


def canonical_answer_sentence(answer: str) -> str:
    """The one sentence every training rationale ends with, so answer tokens match across rationales.

    No full stop after an answer that ends in a symbol: tokenizers merge "}." or ")." into one
    token, which would put the stop inside the answer span.
    """
    return f"The answer is {answer}" + ("." if answer[-1:].isalnum() else "")


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
    boxed = re.fullmatch(r"\s*\\boxed\{(.*)\}\s*", gold, flags=re.S)
    if boxed and boxed.group(1).count("{") == boxed.group(1).count("}"):
        return canonical_answer(boxed.group(1))  # the box is notation, not part of the answer
    kind = answer_kind(gold)
    if kind == "number":
        return format_number(parse_number(gold))
    if kind == "boolean":
        return _BOOLEAN_WORDS[gold.strip().lower()]
    return gold.strip()


def _close(a: Fraction, b: Fraction) -> bool:
    return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))


def answers_match(predicted: str | None, gold: str, kind: AnswerKind | None = None) -> bool:
    """Is ``predicted`` (as :func:`read_answer` gives it) the same answer as ``gold``? A percentage
    matches either reading of the gold ("50%" is 50 or 0.5)."""
    if predicted is None:
        return False
    kind = kind or answer_kind(gold)
    if kind == "number":
        p, g = parse_number(predicted), parse_number(gold)
        if p is None or g is None:
            return False
        ps = [p, p * 100] if predicted.strip().endswith("%") else [p]
        gs = [g, g * 100] if gold.strip().endswith("%") else [g]
        return any(_close(a, b) for a in ps for b in gs)
    if kind in ("choice", "boolean"):
        return predicted.strip().lower() == canonical_answer(gold).lower()
    if kind == "math":
        from math_verify import verify

        gold_parsed, pred_parsed = _math_parse(gold), _math_parse(predicted)
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None))
    return False


@lru_cache(maxsize=16384)
def _math_parse_cached(expr: str) -> tuple:
    from math_verify import parse

    return tuple(parse(expr, parsing_timeout=None))


def _math_parse(text: str) -> list:
    if len(text) > MAX_MATH_CHARS:
        return []
    expr = text if "$" in text or "\\" in text else f"${text}$"
    return list(_math_parse_cached(expr))
