"""Question files for the tests: demo word problems with their gold answers, and a test set under
other column names."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from data_schemas import QUESTIONS, write_table
from mcckd.demo_world.problems import generate_split


def questions_file(path: Path, n: int) -> Path:
    rows = [
        {"question_id": f"q{i}", "question": p.question, "answer": str(p.answer)}
        for i, p in enumerate(generate_split("id", n, seed=7))
    ]
    return write_table(rows, path, QUESTIONS)


def renamed_test_set(questions: Path, out: Path) -> tuple[Path, dict[str, str]]:
    """A test set's rows as JSON lines under other column names, with the ``test_fields`` entry that
    reads them: what a user's own benchmark file looks like to decontaminate and evaluate."""
    rows = pq.read_table(questions).to_pylist()
    out.write_text(
        "".join(
            json.dumps({"qid": r["question_id"], "problem": r["question"], "gold": r["answer"]}) + "\n" for r in rows
        )
    )
    return out, {"id": "qid", "question": "problem", "answer": "gold"}
