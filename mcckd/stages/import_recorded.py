"""Stage 1 (alternative to sample): import rationales people already have into ``samples.parquet``.

Reads the MCC-KD authors' JSON (``instruction``, ``output`` list, ``label``), single-rationale
``{instruction, output}`` lists (arXiv 2502.18001's files), JSONL with the same fields, or Parquet
with ``question``/``rationale``/``answer`` (or the JSON names). A structural problem (not UTF-8,
not JSON, a row that is not an object, a missing or mistyped field) stops the import with an error
naming the file, the row and the field. Content problems (an empty or enormous rationale, a label
that is not an answer) are imported as they are and get their verdict, with a reason, from the judge.
Values a file cannot know (token counts, sampling parameters) are -1.

Files without gold answers (arXiv 2502.18001's) take them from an optional ``labels`` input: any
file of questions with answers in the same formats, joined on the question text (whitespace and
case aside). A row's own label wins; a question found in neither keeps no label, and the judge
gives it ``no_gold_answer``.

Question ids come from an ``id`` field, else from the file name and row. Rows sharing an ``id`` are
one question (one rationale per row is a common export format): they must agree on the question and
the label, and their rationales are numbered in file order. A row with an empty ``output`` list gets
a ``no_rationale`` ledger row, so every input row is accounted for: ``rows_in`` (rationales, and a
question without any as one) = ``rows_out`` + ``rejected``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel
from tqdm.auto import tqdm

from data_schemas import REJECTIONS, SAMPLES, InputError, rejection, write_table
from mcckd.store import path_fingerprint

STAGE_VERSION = 3
FORMATS = (".json", ".jsonl", ".parquet")

FIELD_NAMES = {
    "question": ("instruction", "question"),
    "rationale": ("output", "rationale"),
    "answer": ("label", "answer"),
}


class RecordedDataError(InputError):
    """A recorded-rationale file that cannot be imported; the message names file, row and field."""


class ImportSettings(BaseModel):
    teacher_name: str = "recorded"
    granularity: str = "unknown"
    cot_format: str = "unknown"


def read_records(path: Path) -> list[dict]:
    """The file's rows as dicts, whatever its format."""
    if path.suffix not in FORMATS:
        raise RecordedDataError(f"{path}: unsupported format {path.suffix!r}; expected one of {', '.join(FORMATS)}")
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except (OSError, pa.ArrowInvalid) as e:
            raise RecordedDataError(f"{path}: not a readable Parquet file ({e})") from e
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordedDataError(f"{path}: not UTF-8 at byte {e.start} ({e.reason})") from e
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RecordedDataError(f"{path}: invalid JSON at line {number} column {e.colno}: {e.msg}") from e
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordedDataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(data, list):
        raise RecordedDataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    return data


def field_key(row: dict, name: str) -> str:
    """The key this row spells field ``name`` with (the first accepted spelling when it has none),
    so an error names the field as the user's file does."""
    return next((key for key in FIELD_NAMES[name] if key in row), FIELD_NAMES[name][0])


def field_error(path: Path, i: int, row: dict, name: str, problem: str) -> RecordedDataError:
    return RecordedDataError(f"{path}: row {i}: field {field_key(row, name)!r} {problem}")


def field_value(path: Path, i: int, row: dict, name: str, required: bool) -> object:
    key = field_key(row, name)
    if key in row:
        return row[key]
    if required:
        raise RecordedDataError(f"{path}: row {i}: missing field {' or '.join(map(repr, FIELD_NAMES[name]))}")
    return None


def read_record(path: Path, i: int, row: object) -> tuple[str, str, str, list[str]]:
    """(question_id, question, answer, rationales) of one row; raises naming the row and field."""
    if not isinstance(row, dict):
        raise RecordedDataError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
    question = field_value(path, i, row, "question", required=True)
    outputs = field_value(path, i, row, "rationale", required=True)
    label = field_value(path, i, row, "answer", required=False)
    if not isinstance(question, str):
        raise field_error(path, i, row, "question", f"must be text, got {type(question).__name__}")
    outputs = [outputs] if isinstance(outputs, str) else outputs
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise field_error(path, i, row, "rationale", "must be text or a list of texts")
    if label is not None and not isinstance(label, str | int | float):
        raise field_error(path, i, row, "answer", f"must be text or a number, got {type(label).__name__}")
    qid = row.get("id", f"{path.stem}-{i}")
    if not isinstance(qid, str | int) or isinstance(qid, bool) or not str(qid).strip():
        raise RecordedDataError(f"{path}: row {i}: field 'id' must be non-empty text or an integer, got {qid!r}")
    return str(qid), question.strip(), _label_text(label), [text.strip() for text in outputs]


def _label_text(label: str | float | None) -> str:
    """Labels as text; a JSON ``true``/``false`` label is a yes/no answer, not the number 1/0."""
    if label is None:
        return ""
    if isinstance(label, bool):
        return "yes" if label else "no"
    return str(label)


def question_key(question: str) -> str:
    """What two copies of one question share: the words, whatever their spacing and case."""
    return " ".join(question.split()).casefold()


def read_labels(path: Path) -> dict[str, str]:
    """Gold answers by question (:func:`question_key`); one question with two answers is an error."""
    labels: dict[str, tuple[int, str]] = {}
    for i, row in enumerate(read_records(path)):
        if not isinstance(row, dict):
            raise RecordedDataError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
        question = field_value(path, i, row, "question", required=True)
        label = field_value(path, i, row, "answer", required=True)
        if not isinstance(question, str):
            raise field_error(path, i, row, "question", f"must be text, got {type(question).__name__}")
        if not isinstance(label, str | int | float):
            raise field_error(path, i, row, "answer", f"must be text or a number, got {type(label).__name__}")
        answer = _label_text(label)
        key = question_key(question)
        first, seen = labels.setdefault(key, (i, answer))
        if seen != answer:
            raise field_error(path, i, row, "answer", f"is {answer!r}, but row {first} gave {seen!r}")
    return {key: answer for key, (_, answer) in labels.items()}


def run(settings: ImportSettings, out_dir: Path, recorded: Path, labels: Path | None = None) -> dict:
    records = read_records(recorded)
    gold = read_labels(labels) if labels is not None else {}
    filled = 0
    fp = path_fingerprint(recorded)
    rows, ledger = [], []
    questions: dict[str, tuple[int, str, str, int]] = {}  # id -> (first row, question, label, rationales so far)
    for i, record in enumerate(tqdm(records, desc="import", unit="row")):
        qid, question, answer, texts = read_record(recorded, i, record)
        if not answer and question_key(question) in gold:
            answer, filled = gold[question_key(question)], filled + 1
        first, seen_question, seen_answer, offset = questions.get(qid, (i, question, answer, 0))
        fields = (("question", question, seen_question), ("answer", answer, seen_answer))
        for name, value, seen in fields:
            if value != seen:
                raise field_error(recorded, i, record, name, f"differs from row {first}, which has the same id {qid!r}")
        questions[qid] = (first, question, answer, offset + len(texts))
        if not texts:
            detail = f"row {i} has an empty rationale list"
            ledger.append(rejection("import", qid, "no_rationale", detail, teacher=settings.teacher_name))
        for k, text in enumerate(texts):
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
                    "sample_index": offset + k,
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
    write_table(ledger, out_dir / "rejections.parquet", REJECTIONS)
    return {
        "rows_in": len(rows) + len(ledger),
        "rows_out": len(rows),
        "rejected": len(ledger),
        "questions": len(questions),
        "samples": len(rows),
        "labels_filled": filled,
        "unlabelled_questions": sum(not label for _, _, label, _ in questions.values()),
    }
