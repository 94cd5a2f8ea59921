"""Stage 2, judge: extract each rationale's final answer and compare it with the gold answer.

In: ``samples.parquet`` (``SAMPLES``). Out: ``judged.parquet`` (every sample with its extracted
answer and a verdict) and ``rejections.parquet`` (the ledger: every non-correct row and why).
Verdicts, checked in this order: truncated, empty, over_long, duplicate, no_gold_answer, bad_label
(the gold answer is not an answer of any kind), no_answer, wrong_answer, correct.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel
from tqdm.auto import tqdm

from data_schemas import JUDGED, REJECTIONS, SAMPLES, read_table, rejections_table, write_table
from mcckd.answers import answer_kind, answers_match, extract_answer

STAGE_VERSION = 2


class JudgeSettings(BaseModel):
    reject_truncated: bool = True  # a rationale cut by max_tokens may end on a half-written answer
    max_rationale_chars: int = 8000


def verdict(
    question_id: str, answer: str, text: str, finish_reason: str, settings: JudgeSettings, seen: set[tuple[str, str]]
) -> tuple[str, str | None]:
    """(verdict, extracted answer) for one sample; ``seen`` tracks duplicates per question."""
    if settings.reject_truncated and finish_reason == "length":
        return "truncated", None
    if not text.strip():
        return "empty", None
    if len(text) > settings.max_rationale_chars:
        return "over_long", None
    key = (question_id, " ".join(text.split()))
    if key in seen:
        return "duplicate", None
    seen.add(key)
    if not answer.strip():
        return "no_gold_answer", None
    kind = _kind(answer)
    if kind is None:
        return "bad_label", None
    predicted = extract_answer(text, kind)
    if predicted is None:
        return "no_answer", None
    return ("correct" if answers_match(predicted, answer, kind) else "wrong_answer"), predicted


_kind = lru_cache(maxsize=65536)(answer_kind)  # many samples share one gold answer


def run(settings: JudgeSettings, out_dir: Path, samples: Path) -> dict:
    table = read_table(samples, SAMPLES)
    cols = table.select(["question_id", "answer", "rationale", "finish_reason"]).to_pydict()
    seen: set[tuple[str, str]] = set()
    verdicts, predicted = [], []
    rows = zip(cols["question_id"], cols["answer"], cols["rationale"], cols["finish_reason"], strict=True)
    for qid, answer, text, finish in tqdm(rows, total=table.num_rows, desc="judge", unit="rationale"):
        v, p = verdict(qid, answer, text, finish, settings, seen)
        verdicts.append(v)
        predicted.append(p)
    judged = table.append_column("predicted_answer", pa.array(predicted, pa.string()))
    judged = judged.append_column("verdict", pa.array(verdicts, pa.string()))
    write_table(judged, out_dir / "judged.parquet", JUDGED)
    rejected = [i for i, v in enumerate(verdicts) if v != "correct"]
    details = [
        f"extracted {predicted[i]!r}, gold {cols['answer'][i]!r}" if verdicts[i] == "wrong_answer" else ""
        for i in rejected
    ]
    ledger = rejections_table("judge", table.take(rejected), [verdicts[i] for i in rejected], details)
    write_table(ledger, out_dir / "rejections.parquet", REJECTIONS)
    counts = Counter(verdicts)
    return {"samples": len(verdicts), "correct": counts["correct"], "verdicts": dict(counts)}
