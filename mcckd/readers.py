"""Question and rationale files as people publish them, read the same way for training and for testing.

Formats: a JSON list of objects, JSON lines, Parquet, or a ``datasets`` folder (``save_to_disk``).
Fields are found by name: the question in ``instruction`` or ``question``, the rationale(s) in
``output`` or ``rationale`` (text or a list of texts), the gold answer in ``label`` or ``answer``, the
id in ``id`` or ``question_id``; a ``fields`` mapping (our name -> the file's column) replaces the
accepted names of the fields it gives. That covers the MCC-KD authors' JSON (``instruction``,
``output``, ``label``; CSQA's choices are part of the instruction and its label is a letter),
arXiv 2502.18001's ``{instruction, output}`` lists, and GSM8K as published: an ``answer`` with a line
starting ``####`` is a worked rationale whose gold answer follows the ``####`` (thousands commas
removed) and whose text before that line, without its calculator annotations (``<<48/2=24>>``), is a
rationale as a teacher would write it. It is detected per row; no setting is needed.

Every problem is an error naming the file, the row and the field as the file spells it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_schemas import InputError

FORMATS = (".json", ".jsonl", ".parquet")

# Our field -> the column names a file may use for it, in order of preference.
FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "question": ("instruction", "question"),
    "rationale": ("output", "rationale"),
    "answer": ("label", "answer"),
    "id": ("id", "question_id"),
}

GSM8K_MARK = "####"
CALCULATOR = re.compile(r"<<[^<>]*>>")
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class RecordedDataError(InputError):
    """A question or rationale file that cannot be read; the message names file, row and field."""


def field_names(fields: Mapping[str, str] | None = None) -> dict[str, tuple[str, ...]]:
    """The accepted column names of each field, with ``fields`` (our name -> the file's column) applied."""
    names = dict(FIELD_NAMES)
    for ours, theirs in (fields or {}).items():
        if ours not in FIELD_NAMES:
            raise InputError(f"fields: unknown field {ours!r}; expected one of {', '.join(FIELD_NAMES)}")
        if not isinstance(theirs, str) or not theirs:
            raise InputError(f"fields: {ours!r} must name a column, got {theirs!r}")
        names[ours] = (theirs,)
    return names


def read_records(path: Path) -> list[dict]:
    """The file's (or ``datasets`` folder's) rows, whatever its format; rows are not checked here."""
    if path.is_dir():
        return _read_dataset_folder(path)
    if path.suffix not in FORMATS:
        raise RecordedDataError(
            f"{path}: unsupported format {path.suffix!r}; expected one of {', '.join(FORMATS)} or a datasets folder"
        )
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


def _read_dataset_folder(path: Path) -> list[dict]:
    from datasets import DatasetDict, load_from_disk  # only here: the slim image has no datasets

    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise RecordedDataError(f"{path}: not a datasets folder saved with save_to_disk ({e})") from e
    if isinstance(data, DatasetDict):
        if len(data) != 1:
            raise RecordedDataError(f"{path}: a DatasetDict with splits {sorted(data)}; give one split's folder")
        data = next(iter(data.values()))
    return data.to_list()


def field_key(row: dict, name: str, names: Mapping[str, tuple[str, ...]] = FIELD_NAMES) -> str:
    """The key this row spells field ``name`` with (the first accepted spelling when it has none),
    so an error names the field as the user's file does."""
    return next((key for key in names[name] if key in row), names[name][0])


def field_error(
    path: Path, i: int, row: dict, name: str, problem: str, names: Mapping[str, tuple[str, ...]] = FIELD_NAMES
) -> RecordedDataError:
    return RecordedDataError(f"{path}: row {i}: field {field_key(row, name, names)!r} {problem}")


def field_value(
    path: Path, i: int, row: dict, name: str, required: bool, names: Mapping[str, tuple[str, ...]] = FIELD_NAMES
) -> object:
    key = field_key(row, name, names)
    if key in row:
        return row[key]
    if required:
        raise RecordedDataError(f"{path}: row {i}: missing field {' or '.join(map(repr, names[name]))}")
    return None


def gsm8k_answer(text: str) -> tuple[str, str] | None:
    """(rationale, gold) of a GSM8K answer (a line starting with ``####``), else None.

    The gold is the rest of that line without thousands commas ("" when there is nothing); the
    rationale is the text before it without calculator annotations.

    >>> gsm8k_answer("She has 16 - 3 = <<16-3=13>>13 eggs.\\n#### 1,300")
    ('She has 16 - 3 = 13 eggs.', '1300')
    """
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if line.startswith(GSM8K_MARK):
            gold = THOUSANDS.sub("", line[len(GSM8K_MARK) :].strip())
            return CALCULATOR.sub("", "\n".join(lines[:n])).strip(), gold
    return None


def label_text(label: str | float | None) -> str:
    """Labels as text; a JSON ``true``/``false`` label is a yes/no answer, not the number 1/0."""
    if label is None:
        return ""
    if isinstance(label, bool):
        return "yes" if label else "no"
    return str(label).strip()


def _row(path: Path, i: int, row: object) -> dict:
    if not isinstance(row, dict):
        raise RecordedDataError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
    return row


def _question(path: Path, i: int, row: dict, names: Mapping[str, tuple[str, ...]]) -> str:
    question = field_value(path, i, row, "question", required=True, names=names)
    if not isinstance(question, str):
        raise field_error(path, i, row, "question", f"must be text, got {type(question).__name__}", names)
    return question.strip()


def _answer(
    path: Path, i: int, row: dict, names: Mapping[str, tuple[str, ...]], required: bool
) -> tuple[str, str | None]:
    """(gold answer as text, "" if none; the rationale of a GSM8K answer, else None)."""
    label = field_value(path, i, row, "answer", required=required, names=names)
    if label is not None and not isinstance(label, str | int | float):
        raise field_error(path, i, row, "answer", f"must be text or a number, got {type(label).__name__}", names)
    worked = gsm8k_answer(label) if isinstance(label, str) else None
    if worked is None:
        return label_text(label), None
    rationale, gold = worked
    if not gold:
        raise field_error(path, i, row, "answer", f"has {GSM8K_MARK!r} with no answer after it", names)
    return gold, rationale


def _question_id(path: Path, i: int, row: dict, names: Mapping[str, tuple[str, ...]]) -> str:
    key = field_key(row, "id", names)
    qid = row.get(key, f"{path.stem}-{i}")
    if not isinstance(qid, str | int) or isinstance(qid, bool) or not str(qid).strip():
        raise RecordedDataError(f"{path}: row {i}: field {key!r} must be non-empty text or an integer, got {qid!r}")
    return str(qid)


def read_record(
    path: Path, i: int, row: object, names: Mapping[str, tuple[str, ...]] = FIELD_NAMES
) -> tuple[str, str, str, list[str]]:
    """(question_id, question, answer, rationales) of one row of recorded rationales.

    A GSM8K answer gives both the gold answer and, when the row has no rationale field, the rationale.
    """
    row = _row(path, i, row)
    question = _question(path, i, row, names)
    answer, worked = _answer(path, i, row, names, required=False)
    outputs = field_value(path, i, row, "rationale", required=worked is None, names=names)
    if outputs is None and worked is not None:
        outputs = worked
    outputs = [outputs] if isinstance(outputs, str) else outputs
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise field_error(path, i, row, "rationale", "must be text or a list of texts", names)
    return _question_id(path, i, row, names), question, answer, [text.strip() for text in outputs]


def read_question(
    path: Path, i: int, row: object, names: Mapping[str, tuple[str, ...]] = FIELD_NAMES
) -> tuple[str, str, str]:
    """(question_id, question, gold answer) of one row of a test set: both must be there."""
    row = _row(path, i, row)
    question = _question(path, i, row, names)
    if not question:
        raise field_error(path, i, row, "question", "must be non-empty text", names)
    answer, _ = _answer(path, i, row, names, required=True)
    return _question_id(path, i, row, names), question, answer


def read_questions(path: Path, fields: Mapping[str, str] | None = None) -> list[dict]:
    """A test set as ``QUESTIONS`` rows (question_id, question, answer), in file order.

    ``fields`` maps our names (question, answer, id) to the file's columns. A row without a gold
    answer, or two rows with one id, stop the read with an error naming file, row and field.
    """
    names = field_names(fields)
    rows, seen = [], {}
    for i, record in enumerate(read_records(path)):
        qid, question, answer = read_question(path, i, record, names)
        if qid in seen:
            key = field_key(record, "id", names)
            raise RecordedDataError(f"{path}: row {i}: field {key!r}: {qid!r} appears twice (first in row {seen[qid]})")
        seen[qid] = i
        rows.append({"question_id": qid, "question": question, "answer": answer})
    return rows


def question_key(question: str) -> str:
    """What two copies of one question share: the words, whatever their spacing and case."""
    return " ".join(question.split()).casefold()


def read_labels(path: Path, fields: Mapping[str, str] | None = None) -> dict[str, str]:
    """Gold answers by question (:func:`question_key`); one question with two answers is an error."""
    names = field_names(fields)
    labels: dict[str, tuple[int, str]] = {}
    for i, record in enumerate(read_records(path)):
        row = _row(path, i, record)
        question = _question(path, i, row, names)
        answer, _ = _answer(path, i, row, names, required=True)
        first, seen = labels.setdefault(question_key(question), (i, answer))
        if seen != answer:
            raise field_error(path, i, row, "answer", f"is {answer!r}, but row {first} gave {seen!r}", names)
    return {key: answer for key, (_, answer) in labels.items()}
