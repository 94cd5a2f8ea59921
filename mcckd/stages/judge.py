"""Stage 2, judge: read the final answer each rationale commits to and compare it with the gold answer.

In: the samples (``SAMPLES``). Out (``STAGE.outputs``): every sample with its read answer and a
verdict, and the rejection ledger (every non-correct row and why). Verdicts, checked
in this order: truncated, empty, over_long, duplicate, no_gold_answer, bad_label (the gold answer is
not an answer of any kind), no_answer, ambiguous_answer (it commits to two different answers),
wrong_answer, correct. Answers are read by :func:`mcckd.answers.read_answer`, the same code that
scores evaluation.

A file the judge cannot trust stops it with an error naming the file, row and field: two rows with
the same sample key, or rows of one question id that disagree on the question or the gold answer.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
from pydantic import Field
from tqdm.auto import tqdm

from data_schemas import JUDGED, SAMPLES, InputError, read_table, rejections_table
from mcckd.answers import answer_kind, answers_match, read_answer
from mcckd.settings import Settings
from mcckd.stages.spec import LEDGER, Output, StageSpec

SAMPLE_KEY = ("question_id", "teacher", "template", "granularity", "cot_format", "sample_index")


class JudgeSettings(Settings):
    reject_truncated: bool = Field(
        True, description="reject a rationale cut by max_tokens (it may end on a half-written answer)"
    )
    max_rationale_chars: int = Field(8000, ge=1, description="longer rationales are rejected (over_long)")
    workers: int = Field(
        0, ge=0, description="processes reading answers; 0 = one per CPU core (used from PARALLEL_FROM rows)"
    )


STAGE = StageSpec(
    name="judge",
    settings=JudgeSettings,
    version=3,
    inputs=("samples",),
    outputs={
        "judged": Output("judged.parquet", JUDGED, "every sample with its read answer and verdict"),
        "rejections": LEDGER,
    },
)


_kind = lru_cache(maxsize=65536)(answer_kind)  # many samples share one gold answer
PARALLEL_FROM = 20_000  # below this, starting worker processes costs more than it saves
CHUNK = 4_000


def precheck(
    question_id: str, answer: str, text: str, finish_reason: str, settings: JudgeSettings, seen: set[tuple[str, str]]
) -> tuple[str, str] | None:
    """(verdict, detail) for a sample rejected before its answer is read; ``seen`` tracks duplicates."""
    if settings.reject_truncated and finish_reason == "length":
        return "truncated", ""
    if not text.strip():
        return "empty", ""
    if len(text) > settings.max_rationale_chars:
        return "over_long", f"{len(text)} chars > max_rationale_chars {settings.max_rationale_chars}"
    key = (question_id, " ".join(text.split()))
    if key in seen:
        return "duplicate", ""
    seen.add(key)
    if not answer.strip():
        return "no_gold_answer", ""
    if _kind(answer) is None:
        return "bad_label", f"gold {answer[:80]!r} is not a number, choice letter, yes/no or expression"
    return None


def judge_answer(question: str, answer: str, text: str) -> tuple[str, str | None, str]:
    """(verdict, read answer, detail): what ``text`` commits to, against the gold ``answer``."""
    kind = _kind(answer)
    reading = read_answer(text, kind, question)
    if reading.status == "ambiguous":
        return "ambiguous_answer", None, f"commits to {' and '.join(map(repr, reading.alternatives))}"
    if reading.answer is None:
        return "no_answer", None, ""
    if answers_match(reading.answer, answer, kind):
        return "correct", reading.answer, ""
    return "wrong_answer", reading.answer, f"read {reading.answer!r} ({reading.how}), gold {answer!r}"


def verdict(
    question_id: str,
    question: str,
    answer: str,
    text: str,
    finish_reason: str,
    settings: JudgeSettings,
    seen: set[tuple[str, str]],
) -> tuple[str, str | None, str]:
    """(verdict, read answer, detail) for one sample."""
    early = precheck(question_id, answer, text, finish_reason, settings, seen)
    if early is not None:
        return early[0], None, early[1]
    return judge_answer(question, answer, text)


def _judge_chunk(rows: list[tuple[str, str, str]]) -> list[tuple[str, str | None, str]]:
    return [judge_answer(*row) for row in rows]


def judge_answers(rows: list[tuple[str, str, str]], workers: int) -> list[tuple[str, str | None, str]]:
    """:func:`judge_answer` over (question, answer, text) rows, in worker processes for large inputs
    (answer reading is pure Python: two cores judge about 1.8 times as fast as one)."""
    workers = workers or os.cpu_count() or 1
    chunks = [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]
    bar = tqdm(total=len(rows), desc="judge", unit="rationale")
    out: list[tuple[str, str | None, str]] = []
    if workers == 1 or len(rows) < PARALLEL_FROM:
        for chunk in chunks:
            out += _judge_chunk(chunk)
            bar.update(len(chunk))
    else:
        # spawn, not fork: the flow runs this stage in a process that has threads
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for chunk, judged in zip(chunks, pool.map(_judge_chunk, chunks), strict=True):
                out += judged
                bar.update(len(chunk))
    bar.close()
    return out


def check_rows(path: Path, cols: dict[str, list]) -> None:
    """Stop on rows the judge cannot trust: a repeated sample key, or one question id with two
    different questions or gold answers (their rationales would be judged against the wrong gold)."""
    keys: dict[tuple, int] = {}
    first: dict[str, int] = {}
    for i, key in enumerate(zip(*(cols[c] for c in SAMPLE_KEY), strict=True)):
        if key in keys:
            raise InputError(f"{path}: row {i}: field 'sample_index': sample {key} repeats row {keys[key]}")
        keys[key] = i
        j = first.setdefault(key[0], i)
        for field in ("question", "answer"):
            if cols[field][i] != cols[field][j]:
                raise InputError(
                    f"{path}: row {i}: field {field!r}: question id {key[0]!r} has a different {field} in row {j}"
                )


def run(settings: JudgeSettings, out_dir: Path, samples: Path) -> dict:
    table = read_table(samples, SAMPLES)
    cols = table.select(sorted({*SAMPLE_KEY, "question", "answer", "rationale", "finish_reason"})).to_pydict()
    check_rows(samples, cols)
    seen: set[tuple[str, str]] = set()
    n = table.num_rows
    verdicts: list[str] = [""] * n
    predicted: list[str | None] = [None] * n
    details: list[str] = [""] * n
    to_read = []
    for i in range(n):
        early = precheck(
            cols["question_id"][i], cols["answer"][i], cols["rationale"][i], cols["finish_reason"][i], settings, seen
        )
        if early is None:
            to_read.append(i)
        else:
            verdicts[i], details[i] = early
    rows = [(cols["question"][i], cols["answer"][i], cols["rationale"][i]) for i in to_read]
    for i, (v, p, d) in zip(to_read, judge_answers(rows, settings.workers), strict=True):
        verdicts[i], predicted[i], details[i] = v, p, d
    judged = table.append_column("predicted_answer", pa.array(predicted, pa.string()))
    judged = judged.append_column("verdict", pa.array(verdicts, pa.string()))
    STAGE.write(out_dir, "judged", judged)
    rejected = [i for i, v in enumerate(verdicts) if v != "correct"]
    ledger = rejections_table("judge", table, rejected, [verdicts[i] for i in rejected], [details[i] for i in rejected])
    STAGE.write(out_dir, "rejections", ledger)
    counts = Counter(verdicts)
    return {
        "rows_in": len(verdicts),
        "rows_out": counts["correct"],
        "rejected": len(rejected),
        "samples": len(verdicts),
        "correct": counts["correct"],
        "verdicts": dict(counts),
    }
