"""Stage 1 (alternative to sample): import rationales people already have as samples.

Reads what :mod:`mcckd.readers` reads: the MCC-KD authors' JSON (``instruction``, ``output`` list,
``label``), single-rationale ``{instruction, output}`` lists (arXiv 2502.18001's files), GSM8K as
published (``question``, ``answer`` with its worked rationale and ``#### gold`` line: the rationale,
without calculator annotations, is the recorded output), JSONL or Parquet with the same fields or the
names given in ``fields``, or a ``datasets`` folder. A structural problem (not UTF-8, not JSON, a row
that is not an object, a missing or mistyped field, a ``####`` with nothing after it) stops the import
with an error naming the file, the row and the field. Content problems (an empty or enormous
rationale, a label that is not an answer) are imported as they are and get their verdict, with a
reason, from the judge. Values a file cannot know (token counts, sampling parameters) are -1.

Files without gold answers (arXiv 2502.18001's) take them from an optional ``labels`` input: any
file of questions with answers in the same formats, joined on the question text (whitespace and
case aside). A row's own label wins; a question found in neither keeps no label, and the judge
gives it ``no_gold_answer``.

Question ids come from an ``id`` (or ``question_id``) field, else from the file name and row. Rows
sharing an id are one question (one rationale per row is a common export format): they must agree
on the question and the label, and their rationales are numbered in file order. A row with an empty
``output`` list gets a ``no_rationale`` ledger row, so every input row is accounted for: ``rows_in``
(rationales, and a question without any as one) = ``rows_out`` + ``rejected``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from tqdm.auto import tqdm

from data_schemas import rejection
from mcckd.readers import RecordedDataError as RecordedDataError  # raised here; callers catch it from this module
from mcckd.readers import field_error, field_names, question_key, read_labels, read_record, read_records
from mcckd.settings import Settings
from mcckd.stages.spec import LEDGER, SAMPLES_FILE, StageSpec
from mcckd.store import path_fingerprint


class ImportSettings(Settings):
    teacher_name: str = "recorded"
    granularity: str = "unknown"
    cot_format: str = "unknown"
    max_questions: int | None = Field(
        None, ge=1, description="import only the file's first N questions (a quick run); the rest are counted"
    )
    fields: dict[str, str] = Field(
        {},
        description="our field (question, rationale, answer, id) -> the recorded file's column, for files that "
        "name them otherwise; the labels file is read with the usual names",
    )

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: dict[str, str]) -> dict[str, str]:
        field_names(fields)  # raises naming an unknown field
        return fields


STAGE = StageSpec(
    name="import",
    settings=ImportSettings,
    version=4,
    inputs=("recorded",),
    optional_inputs=("labels",),
    user_files=("recorded", "labels"),
    outputs={"samples": SAMPLES_FILE, "rejections": LEDGER},
)


def run(settings: ImportSettings, out_dir: Path, recorded: Path, labels: Path | None = None) -> dict:
    records = read_records(recorded)
    names = field_names(settings.fields)
    gold = read_labels(labels) if labels is not None else {}
    filled = 0
    fp = path_fingerprint(recorded)
    rows, ledger = [], []
    questions: dict[str, tuple[int, str, str, int]] = {}  # id -> (first row, question, label, rationales so far)
    beyond_limit = 0  # rows of questions past max_questions: counted, not imported
    for i, record in enumerate(tqdm(records, desc="import", unit="row")):
        qid, question, answer, texts = read_record(recorded, i, record, names)
        if settings.max_questions is not None and qid not in questions and len(questions) >= settings.max_questions:
            beyond_limit += 1
            continue
        if not answer and question_key(question) in gold:
            answer, filled = gold[question_key(question)], filled + 1
        first, seen_question, seen_answer, offset = questions.get(qid, (i, question, answer, 0))
        fields = (("question", question, seen_question), ("answer", answer, seen_answer))
        for name, value, seen in fields:
            if value != seen:
                problem = f"differs from row {first}, which has the same id {qid!r}"
                raise field_error(recorded, i, record, name, problem, names)
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
    STAGE.write(out_dir, "samples", rows)
    STAGE.write(out_dir, "rejections", ledger)
    return {
        "rows_in": len(rows) + len(ledger),
        "rows_out": len(rows),
        "rejected": len(ledger),
        "questions": len(questions),
        "samples": len(rows),
        "rows_beyond_max_questions": beyond_limit,
        "labels_filled": filled,
        "unlabelled_questions": sum(not label for _, _, label, _ in questions.values()),
    }
