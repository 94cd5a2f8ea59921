"""Stage 1 (alternative to sample): import rationales people already have into ``samples.parquet``.

Reads the MCC-KD authors' JSON (``instruction``, ``output`` list, ``label``), single-rationale
``{instruction, output}`` lists (arXiv 2502.18001's files), JSONL with the same fields, or Parquet
with ``question``/``rationale``/``answer`` (or the JSON names). A structural problem (not UTF-8,
not JSON, a row that is not an object, a missing or mistyped field) stops the import with an error
naming the file, the row and the field. Content problems (an empty or enormous rationale, a label
that is not an answer) are imported as they are and get their verdict, with a reason, from the judge.
Values a file cannot know (token counts, sampling parameters) are -1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel
from tqdm.auto import tqdm

from data_schemas import SAMPLES, write_table
from mcckd.store import path_fingerprint

STAGE_VERSION = 1

FIELD_NAMES = {
    "question": ("instruction", "question"),
    "rationale": ("output", "rationale"),
    "answer": ("label", "answer"),
}


class RecordedDataError(ValueError):
    """A recorded-rationale file that cannot be imported; the message names file, row and field."""


class ImportSettings(BaseModel):
    teacher_name: str = "recorded"
    granularity: str = "unknown"
    cot_format: str = "unknown"


def read_records(path: Path) -> list[dict]:
    """The file's rows as dicts, whatever its format."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordedDataError(f"{path}: not UTF-8 at byte {e.start} ({e.reason})") from e
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordedDataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(data, list):
        raise RecordedDataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    return data


def _field(path: Path, i: int, row: dict, name: str, required: bool) -> object:
    for key in FIELD_NAMES[name]:
        if key in row:
            return row[key]
    if required:
        raise RecordedDataError(f"{path}: row {i}: missing field {' or '.join(map(repr, FIELD_NAMES[name]))}")
    return None


def rows_from_record(path: Path, i: int, row: object) -> list[tuple[str, str, str, int, str]]:
    """(question_id, question, answer, sample_index, rationale) for each rationale of one row."""
    if not isinstance(row, dict):
        raise RecordedDataError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
    question = _field(path, i, row, "question", required=True)
    outputs = _field(path, i, row, "rationale", required=True)
    label = _field(path, i, row, "answer", required=False)
    if not isinstance(question, str):
        raise RecordedDataError(f"{path}: row {i}: field 'instruction' must be text, got {type(question).__name__}")
    outputs = [outputs] if isinstance(outputs, str) else outputs
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise RecordedDataError(f"{path}: row {i}: field 'output' must be text or a list of texts")
    if label is not None and not isinstance(label, str | int | float):
        raise RecordedDataError(f"{path}: row {i}: field 'label' must be text or a number, got {type(label).__name__}")
    qid = str(row.get("id", f"{path.stem}-{i}"))
    answer = "" if label is None else str(label)
    return [(qid, question.strip(), answer, k, text.strip()) for k, text in enumerate(outputs)]


def run(settings: ImportSettings, out_dir: Path, recorded: Path) -> dict:
    records = read_records(recorded)
    fp = path_fingerprint(recorded)
    rows = []
    for i, record in enumerate(tqdm(records, desc="import", unit="row")):
        for qid, question, answer, k, text in rows_from_record(recorded, i, record):
            rows.append(
                {
                    "question_id": qid,
                    "question": question,
                    "answer": answer,
                    "teacher": settings.teacher_name,
                    "teacher_fingerprint": fp,
                    "template": "recorded",
                    "granularity": settings.granularity,
                    "cot_format": settings.cot_format,
                    "prompt": question,
                    "sample_index": k,
                    "rationale": text,
                    "finish_reason": "recorded",
                    "prompt_tokens": -1,
                    "completion_tokens": -1,
                    "temperature": -1.0,
                    "top_p": -1.0,
                    "max_tokens": -1,
                    "seed": -1,
                }
            )
    write_table(rows, out_dir / "samples.parquet", SAMPLES)
    return {"questions": len(records), "samples": len(rows)}
