"""Stage 2, judge: extract each rationale's final answer and compare it with the gold answer.

In: ``samples.parquet`` (``SAMPLES``). Out: ``judged.parquet`` (every sample with its extracted
answer and a verdict) and ``rejections.parquet`` (the ledger: every non-correct row and why).
Verdicts, checked in this order: truncated, empty, over_long, duplicate, no_gold_answer, bad_label
(the gold answer is not an answer of any kind), no_answer, wrong_answer, correct.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import BaseModel
from tqdm.auto import tqdm

from data_schemas import JUDGED, REJECTIONS, SAMPLES, read_table, rejection, write_table
from mcckd.answers import answer_kind, answers_match, extract_answer

STAGE_VERSION = 1


class JudgeSettings(BaseModel):
    reject_truncated: bool = True  # a rationale cut by max_tokens may end on a half-written answer
    max_rationale_chars: int = 8000


def verdict(row: dict, settings: JudgeSettings, seen: set[tuple[str, str]]) -> tuple[str, str | None]:
    """(verdict, extracted answer) for one sample row; ``seen`` tracks duplicates per question."""
    text = row["rationale"]
    if settings.reject_truncated and row["finish_reason"] == "length":
        return "truncated", None
    if not text.strip():
        return "empty", None
    if len(text) > settings.max_rationale_chars:
        return "over_long", None
    key = (row["question_id"], " ".join(text.split()))
    if key in seen:
        return "duplicate", None
    seen.add(key)
    if not row["answer"].strip():
        return "no_gold_answer", None
    kind = answer_kind(row["answer"])
    if kind is None:
        return "bad_label", None
    predicted = extract_answer(text, kind)
    if predicted is None:
        return "no_answer", None
    return ("correct" if answers_match(predicted, row["answer"], kind) else "wrong_answer"), predicted


def run(settings: JudgeSettings, out_dir: Path, samples: Path) -> dict:
    rows = read_table(samples, SAMPLES).to_pylist()
    seen: set[tuple[str, str]] = set()
    judged, rejections = [], []
    for row in tqdm(rows, desc="judge", unit="rationale"):
        v, predicted = verdict(row, settings, seen)
        judged.append({**row, "predicted_answer": predicted, "verdict": v})
        if v != "correct":
            detail = f"extracted {predicted!r}, gold {row['answer']!r}" if v == "wrong_answer" else ""
            rejections.append(rejection("judge", row["question_id"], v, detail, row["teacher"], row["sample_index"]))
    write_table(judged, out_dir / "judged.parquet", JUDGED)
    write_table(rejections, out_dir / "rejections.parquet", REJECTIONS)
    counts = Counter(r["verdict"] for r in judged)
    return {"samples": len(judged), "correct": counts["correct"], "verdicts": dict(counts)}
