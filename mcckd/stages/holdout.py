"""Stage 1b, holdout (between the source and judge): set aside validation questions that are never
trained on, before anything is judged or selected.

In: the samples (``SAMPLES``). Out (``STAGE.outputs``): the samples of the other questions (what
judge reads) and the validation questions with their gold answers (``QUESTIONS``), which pick the
checkpoint a training keeps (the ``choose`` stage) and which decontamination treats as it treats
the test sets. A question is held out by a hash of (seed, question id), so the split does not move
when the file is reordered or grows: the ``fraction`` of the questions that have a gold answer
(one without cannot validate anything; it stays, and judge rejects it).

Questions that share a word n-gram (SVAMP writes several questions on one story) are held out
together, whole groups until the share is reached, so decontaminating the training questions
against the validation ones removes none: held out one by one, 89 validation questions of a
cot-factors SVAMP cell cost 149 of its 610 training questions to that decontamination.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
from pydantic import Field

from data_schemas import QUESTIONS, SAMPLES, InputError, read_table
from mcckd.answers import answer_kind
from mcckd.decontaminate import ngrams
from mcckd.settings import Settings
from mcckd.stages.spec import SAMPLES_FILE, Output, StageSpec


class HoldoutSettings(Settings):
    fraction: float = Field(
        0.15, gt=0, lt=1, description="share of the questions (with a gold answer) held out for validation"
    )
    seed: int = Field(0, ge=0, description="which questions: a hash of (seed, question id)")
    group_ngram: int | None = Field(
        8,
        ge=1,
        description="questions sharing a word n-gram are held out together (as decontaminate compares them); "
        "None: question by question",
    )


STAGE = StageSpec(
    name="holdout",
    settings=HoldoutSettings,
    version=1,
    inputs=("samples",),
    outputs={
        "samples": SAMPLES_FILE,
        "validation": Output("validation.parquet", QUESTIONS, "the held-out questions with their gold answers"),
    },
)


def rank(seed: int, question_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{question_id}".encode()).digest()


def groups(questions: dict[str, str], n: int | None) -> list[list[str]]:
    """Questions linked by a shared word n-gram, transitively (union-find); singletons when ``n`` is None."""
    parent = {q: q for q in questions}

    def root(q: str) -> str:
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    if n is not None:
        first: dict[str, str] = {}
        for q, text in questions.items():
            for gram in ngrams(text, n):
                parent[root(q)] = root(first.setdefault(gram, q))
    members: dict[str, list[str]] = {}
    for q in questions:
        members.setdefault(root(q), []).append(q)
    return list(members.values())


def held_out(questions: dict[str, dict], settings: HoldoutSettings) -> tuple[set[str], int]:
    """The ids of the validation questions: whole groups, in the order of their members' lowest hash,
    each taken if it fits, until ``fraction`` of the questions with a gold answer are in (a group
    chained together by common phrasing never swallows the training set); and how many groups it took."""
    eligible = {q: row["question"] for q, row in questions.items() if answer_kind(row["answer"])}
    ranked = sorted(groups(eligible, settings.group_ngram), key=lambda g: min(rank(settings.seed, q) for q in g))
    target, chosen, taken = round(settings.fraction * len(eligible)), set(), 0
    for group in ranked:
        if len(chosen) + len(group) <= target:
            chosen.update(group)
            taken += 1
    return chosen, taken


def run(settings: HoldoutSettings, out_dir: Path, samples: Path) -> dict:
    table = read_table(samples, SAMPLES)
    questions: dict[str, dict] = {}
    for i, row in enumerate(table.select(["question_id", "question", "answer"]).to_pylist()):
        first = questions.setdefault(row["question_id"], row)
        if first["question"] != row["question"] or first["answer"] != row["answer"]:
            raise InputError(
                f"{samples}: row {i}: question_id {row['question_id']!r} has another question or gold answer "
                "than its first row"
            )
    validation, validation_groups = held_out(questions, settings)
    keep = [q not in validation for q in table.column("question_id").to_pylist()]
    STAGE.write(out_dir, "samples", table.filter(pa.array(keep, pa.bool_())))
    STAGE.write(out_dir, "validation", [questions[q] for q in sorted(validation)])
    return {
        "questions": len(questions) - len(validation),
        "validation_questions": len(validation),
        "validation_groups": validation_groups,
        "samples": sum(keep),
        "held_out_samples": len(keep) - sum(keep),
        "without_gold_answer": sum(not answer_kind(row["answer"]) for row in questions.values()),
    }
