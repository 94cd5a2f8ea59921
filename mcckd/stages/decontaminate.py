"""Stage 3b, decontaminate (between select and materialize): no training question may share a word
n-gram with a test question (:mod:`mcckd.decontaminate`; 8 words by default, as open-r1 checks).

In: ``selected`` (``SELECTED``) and any number of test sets by name (``--in NAME=PATH``, read as the
evaluate stage reads them: :func:`mcckd.readers.read_questions`). Out (``STAGE.outputs``): the selected
rationales without those of contaminated training questions, the ledger (one ``contaminated``
row per removed rationale, its detail naming the test set, the test question and the shared
n-gram) and the overlaps (``OVERLAPS``: one row per training question, test set and test
question that overlap). The summary gives, per test set, the training questions it contaminated
(``contaminated``) and its own questions found in the training data (``test_questions_overlapping``).
With no test set, everything passes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import Field

from data_schemas import OVERLAPS, SELECTED, InputError, read_table, rejections_table, take
from mcckd.decontaminate import find_overlaps, gram_name
from mcckd.readers import read_questions
from mcckd.settings import Settings
from mcckd.stages.spec import LEDGER, SELECTED_FILE, Output, StageSpec


class DecontaminateSettings(Settings):
    ngram: int | None = Field(
        8,
        ge=1,
        description="words per n-gram (a shorter question is compared whole); None: whole questions only, "
        "for question sets written from shared templates (the demo world), where common phrasing is by design",
    )
    fields: dict[str, dict[str, str]] = Field(
        {},
        description="per test set name: our field names (question, answer, id) -> the file's columns, "
        "as the evaluate stage reads that set",
    )


STAGE = StageSpec(
    name="decontaminate",
    settings=DecontaminateSettings,
    version=1,
    inputs=("selected",),
    test_sets=True,
    outputs={
        "selected": SELECTED_FILE,
        "rejections": LEDGER,
        "overlaps": Output("overlaps.parquet", OVERLAPS, "(training question, test set, test question) overlaps"),
    },
)


def run(settings: DecontaminateSettings, out_dir: Path, selected: Path, **test_sets: Path) -> dict:
    unknown = sorted(set(settings.fields) - set(test_sets))
    if unknown:
        raise InputError(f"decontaminate settings: fields given for {unknown}, which are not test set inputs")
    table = read_table(selected, SELECTED)
    qids = table.column("question_id").to_pylist()
    train = dict(zip(qids, table.column("question").to_pylist(), strict=True))  # first row of each question
    tests = {name: read_questions(Path(path), settings.fields.get(name)) for name, path in sorted(test_sets.items())}
    test_text = {(name, q["question_id"]): q["question"] for name, qs in tests.items() for q in qs}
    test_questions = {name: [(q["question_id"], q["question"]) for q in qs] for name, qs in tests.items()}
    overlaps = find_overlaps(train.items(), test_questions, settings.ngram)

    first: dict[str, tuple[str, str, str]] = {}  # training question -> its first overlap
    hits: Counter = Counter()
    for train_id, name, test_id, gram in overlaps:
        first.setdefault(train_id, (name, test_id, gram))
        hits[train_id] += 1
    kept = [i for i, qid in enumerate(qids) if qid not in first]
    removed = [i for i, qid in enumerate(qids) if qid in first]
    details = []
    for i in removed:
        name, test_id, gram = first[qids[i]]
        more = hits[qids[i]] - 1
        details.append(
            f"test set {name!r} question {test_id!r} shares the {gram_name(settings.ngram)} {gram!r}"
            + (f" (and {more} more test question{'s' * (more > 1)})" if more else "")
        )
    STAGE.write(out_dir, "selected", take(table, kept))
    ledger = rejections_table("decontaminate", table, removed, ["contaminated"] * len(removed), details)
    STAGE.write(out_dir, "rejections", ledger)
    rows = [
        {
            "question_id": train_id,
            "question": train[train_id],
            "test_set": name,
            "test_question_id": test_id,
            "test_question": test_text[(name, test_id)],
            "ngram": gram,
        }
        for train_id, name, test_id, gram in overlaps
    ]
    STAGE.write(out_dir, "overlaps", rows)
    return {
        "rows_in": table.num_rows,
        "rows_out": len(kept),
        "rejected": len(removed),
        "ngram": settings.ngram,
        "questions_in": len(train),
        "questions_out": len(train) - len(first),
        "contaminated": {name: len({t for t, s, _, _ in overlaps if s == name}) for name in tests},
        "test_questions": {name: len(qs) for name, qs in tests.items()},
        "test_questions_overlapping": {name: len({q for _, s, q, _ in overlaps if s == name}) for name in tests},
        "overlaps": len(overlaps),
    }
