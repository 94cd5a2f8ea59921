"""Arrow schemas of every stage's Parquet, and the checks every stage runs on its input and output.

A stage reads with :func:`read_table` and writes with :func:`write_table`; both compare the file
against the schema here and name the file and the column when they disagree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from pydantic import ValidationError

QUESTIONS = pa.schema(
    [
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),  # gold answer, as text
    ]
)

SAMPLES = pa.schema(
    [
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("teacher", pa.string()),
        ("teacher_fingerprint", pa.string()),
        ("template", pa.string()),
        ("granularity", pa.string()),
        ("cot_format", pa.string()),
        ("prompt", pa.string()),
        ("sample_index", pa.int32()),
        ("rationale", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("temperature", pa.float32()),
        ("top_p", pa.float32()),
        ("max_tokens", pa.int32()),
        ("seed", pa.int64()),
    ]
)

# Judged samples: every sample row, with the extracted answer and a verdict ("correct" or a reason).
JUDGED = SAMPLES.append(pa.field("predicted_answer", pa.string())).append(pa.field("verdict", pa.string()))

# Selected rationales: the correct ones kept for training, with their diversity figures.
SELECTED = JUDGED.append(pa.field("selection_rank", pa.int32())).append(pa.field("max_similarity", pa.float32()))

# Why a question ended up with fewer than K (or no) rationales.
SELECTION_OUTCOMES = pa.schema(
    [
        ("question_id", pa.string()),
        ("correct", pa.int32()),
        ("selected", pa.int32()),
        ("outcome", pa.string()),  # "full", "kept_fewer", "dropped_fewer", "no_correct"
    ]
)

# The rejection ledger: one row per rationale that did not reach the training set.
REJECTIONS = pa.schema(
    [
        ("stage", pa.string()),
        ("question_id", pa.string()),
        ("teacher", pa.string()),
        ("sample_index", pa.int32()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


# Decontamination: one row per (training question, test set, test question) sharing a word n-gram.
OVERLAPS = pa.schema(
    [
        ("question_id", pa.string()),  # the training question
        ("question", pa.string()),
        ("test_set", pa.string()),
        ("test_question_id", pa.string()),
        ("test_question", pa.string()),
        ("ngram", pa.string()),  # the first shared n-gram, normalised (lowercase, no punctuation)
    ]
)


def rejection(
    stage: str, question_id: str, reason: str, detail: str = "", teacher: str = "", sample_index: int = -1
) -> dict:
    """One ledger row; ``sample_index`` -1 means the whole question (no single sample)."""
    return {
        "stage": stage,
        "question_id": question_id,
        "teacher": teacher,
        "sample_index": sample_index,
        "reason": reason,
        "detail": detail,
    }


def take(table: pa.Table, indices: list[int]) -> pa.Table:
    """``table.take`` that also works for no indices (pyarrow cannot infer a type from ``[]``)."""
    return table.take(pa.array(indices, type=pa.int64()))


def rejections_table(
    stage: str, table: pa.Table, indices: list[int], reasons: list[str], details: list[str]
) -> pa.Table:
    """Ledger rows for rows ``indices`` of a ``SAMPLES``-like table, built column-wise."""
    rows = take(table, indices)
    n = rows.num_rows
    return pa.table(
        {
            "stage": pa.array([stage] * n, pa.string()),
            "question_id": rows.column("question_id"),
            "teacher": rows.column("teacher"),
            "sample_index": rows.column("sample_index"),
            "reason": pa.array(reasons, pa.string()),
            "detail": pa.array(details, pa.string()),
        },
        schema=REJECTIONS,
    )


ANSWER_SPAN = pa.struct([("start", pa.int32()), ("end", pa.int32())])

# The materialized training set: one row per question with its K rationales and answer spans.
TRAINSET = pa.schema(
    [
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("rationales", pa.list_(pa.string())),
        ("answer_spans", pa.list_(ANSWER_SPAN)),  # character offsets of the answer in each rationale
        ("teachers", pa.list_(pa.string())),
        ("sample_indices", pa.list_(pa.int32())),
    ]
)

TRAIN_LOG = pa.schema(
    [
        ("step", pa.int64()),
        ("epoch", pa.int64()),
        ("loss", pa.float64()),
        ("cross_entropy", pa.float64()),
        ("consistency", pa.float64()),
        ("lr", pa.float64()),
        ("seconds", pa.float64()),
    ]
)

DEV_LOG = pa.schema(
    [
        ("step", pa.int64()),
        ("epoch", pa.int64()),
        ("dev_cross_entropy", pa.float64()),
        ("dev_answer_token_accuracy", pa.float64()),
        ("best", pa.bool_()),
    ]
)

# Checkpoint selection: each saved checkpoint's accuracy on the validation questions.
CHECKPOINTS = pa.schema(
    [
        ("checkpoint", pa.string()),  # epoch-N
        ("correct", pa.int64()),
        ("questions", pa.int64()),
        ("accuracy", pa.float64()),
        ("chosen", pa.bool_()),
    ]
)

PREDICTIONS = pa.schema(
    [
        ("model", pa.string()),
        ("split", pa.string()),
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("generation", pa.string()),  # the first sample's text (greedy: the only one)
        ("generations", pa.list_(pa.string())),  # every sample's text (self-consistency)
        ("predicted_answer", pa.string()),  # the majority answer; null = unanswered
        ("votes", pa.int32()),  # samples that gave predicted_answer
        ("answered", pa.bool_()),
        ("correct", pa.bool_()),
        ("finish_reason", pa.string()),
    ]
)


class InputError(ValueError):
    """A user's input cannot be used; the message names the file, and the row and field where known.

    The command line prints it as one line (the traceback goes to the stage's log file)."""


class SchemaError(InputError):
    """A Parquet file or table does not match its stage schema."""


# Columns that may hold nulls: an answer the judge could not read. Every other null is an error.
NULLABLE = frozenset({"predicted_answer"})


def check_schema(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Return ``table`` with ``schema``'s column order; raise naming ``where``, the column, and for
    a null value the row."""
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(f"{where}: missing column {field.name!r} ({field.type})")
        actual = table.schema.field(field.name).type
        if actual != field.type:
            raise SchemaError(f"{where}: column {field.name!r} has type {actual}, expected {field.type}")
        column = table.column(field.name)
        if column.null_count and field.name not in NULLABLE:
            row = pc.index(pc.is_null(column), True).as_py()
            raise SchemaError(f"{where}: row {row}: field {field.name!r} is null")
    extra = [c for c in table.column_names if c not in schema.names]
    if extra:
        raise SchemaError(f"{where}: unexpected column(s) {extra}")
    return table.select(schema.names)


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise SchemaError(f"{path}: not a readable Parquet file ({e})") from e
    return check_schema(table, schema, str(path))


def write_table(rows: list[dict] | pa.Table, path: Path, schema: pa.Schema) -> Path:
    """Validate and write atomically (temp file then rename), so a reader never sees half a file."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    table = check_schema(table, schema, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def field_errors(error: ValidationError) -> list[str]:
    """One line per problem of a pydantic ``ValidationError``, naming the field by its path:
    ``field 'students.mcc_kd.train.loop.alpha': Input should be greater than or equal to 0``;
    a check of the whole model (or unreadable JSON) gives its message alone."""
    lines = []
    for problem in error.errors():
        field = ".".join(map(str, problem["loc"]))
        message = " ".join(problem["msg"].split())
        lines.append(f"field {field!r}: {message}" if field else message)
    return lines


def exit_invalid(prog: str, where: str, error: ValidationError) -> NoReturn:
    """Print ``PROG: error: WHERE: field 'a.b': message`` on stderr, one line per problem, and exit
    with status 2 (a usage error, as argparse's): what a command does with bad settings."""
    import sys

    for line in field_errors(error):
        print(f"{prog}: error: {where}: {line}", file=sys.stderr)
    sys.exit(2)
