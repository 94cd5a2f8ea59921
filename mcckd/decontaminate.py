"""Which training questions share a word n-gram with a test question: the test that open-r1's
``scripts/decontaminate.py`` runs (after s1), 8 words by default.

Texts are compared normalised (lowercase, punctuation removed, whitespace collapsed). A text shorter
than n words is one gram, its whole normalised text, so a short question overlaps only its exact
copy; n = None compares whole questions only (exact copies), for question sets written from shared
templates, where common phrasing is by design. The test sets' grams are indexed in a dict, so
checking a training set costs one lookup per training gram: GSM8K's 7,473 training questions
against its 1,319 test questions take about half a second.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalize(text: str) -> str:
    """Lowercase, punctuation removed (Unicode's too: "Janet’s" and "Janet's" agree), whitespace collapsed.

    >>> normalize("Janet’s ducks lay 16 eggs,  per day!")
    'janets ducks lay 16 eggs per day'
    """
    return " ".join(PUNCTUATION.sub("", text.lower()).split())


def ngrams(text: str, n: int | None) -> list[str]:
    """The word n-grams of ``text`` normalised, in order (repeats kept); a text of fewer than ``n``
    words (any text when ``n`` is None) is one gram, an empty one none."""
    if n is not None and n < 1:
        raise ValueError(f"n-gram size must be at least 1, got {n}")
    words = normalize(text).split()
    if n is None or len(words) < n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def gram_name(n: int | None) -> str:
    """How a setting of ``n`` reads in a sentence: "8-gram", or "whole question"."""
    return "whole question" if n is None else f"{n}-gram"


def index_ngrams(tests: Mapping[str, Iterable[tuple[str, str]]], n: int | None) -> dict[str, list[tuple[str, str]]]:
    """gram -> every (test set, test id) whose question has it, in set and file order."""
    index: dict[str, list[tuple[str, str]]] = {}
    for name, questions in tests.items():
        for test_id, question in questions:
            for gram in dict.fromkeys(ngrams(question, n)):
                index.setdefault(gram, []).append((name, test_id))
    return index


def find_overlaps(
    train: Iterable[tuple[str, str]], tests: Mapping[str, Iterable[tuple[str, str]]], n: int | None = 8
) -> list[tuple[str, str, str, str]]:
    """(train id, test set, test id, shared n-gram): one per training question and test question that
    share a gram, the gram being the first of the training question's that they share. In training
    order, then in the order the training question's grams meet the test questions."""
    index = index_ngrams(tests, n)
    overlaps = []
    for train_id, question in train:
        seen: set[tuple[str, str]] = set()
        for gram in ngrams(question, n):
            for hit in index.get(gram, ()):
                if hit not in seen:
                    seen.add(hit)
                    overlaps.append((train_id, hit[0], hit[1], gram))
    return overlaps
