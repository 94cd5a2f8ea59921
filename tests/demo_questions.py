"""Question files for the sampling tests: demo word problems with their gold answers."""

from __future__ import annotations

from pathlib import Path

from data_schemas import QUESTIONS, write_table
from mcckd.demo_world.problems import generate_split


def questions_file(path: Path, n: int) -> Path:
    rows = [
        {"question_id": f"q{i}", "question": p.question, "answer": str(p.answer)}
        for i, p in enumerate(generate_split("id", n, seed=7))
    ]
    return write_table(rows, path, QUESTIONS)
