"""Importing recorded rationales, malformed rows, and the judge on the papers' real data."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mcckd.answers import answers_match, extract_answer
from mcckd.stages import execute, output
from mcckd.stages.import_recorded import ImportSettings, RecordedDataError
from mcckd.stages.judge import JudgeSettings
from tests.shared_data import SHARED_DATA, needs_shared


def import_and_judge(tmp_path: Path, recorded: Path) -> list[dict]:
    execute("import", ImportSettings(teacher_name="t"), tmp_path / "imp", {"recorded": recorded})
    execute("judge", JudgeSettings(), tmp_path / "jud", {"samples": tmp_path / "imp"})
    return pq.read_table(output("judge", tmp_path / "jud", "judged")).to_pylist()


def write_json(path: Path, rows: object) -> Path:
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"output": ["x"], "label": "1"}], r"rows\.json: row 0: missing field 'instruction' or 'question'"),
        ([{"instruction": "q", "output": ["a"]}, {"instruction": "q2"}], r"row 1: missing field 'output'"),
        ([{"instruction": "q", "output": [1, 2]}], r"row 0: field 'output' must be text or a list of texts"),
        ([{"instruction": "q", "output": "a", "label": {"x": 1}}], r"row 0: field 'label' must be text or a number"),
        # Errors spell a field as the file does.
        ([{"question": 3, "rationale": "a"}], r"row 0: field 'question' must be text, got int"),
        ([{"question": "q", "rationale": [None]}], r"row 0: field 'rationale' must be text or a list of texts"),
        ([{"question": "q", "rationale": "a", "answer": [1]}], r"row 0: field 'answer' must be text or a number"),
        (
            [{"id": 7, "question": "q", "rationale": "a"}, {"id": 7, "question": "r", "rationale": "b"}],
            r"row 1: field 'question' differs from row 0, which has the same id '7'",
        ),
        (["just a string"], r"row 0: expected an object, got str"),
        ({"instruction": "q"}, r"expected a JSON list of rows, got dict"),
    ],
)
def test_structural_problems_name_file_row_and_field(tmp_path, rows, message):
    path = write_json(tmp_path / "rows.json", rows)
    with pytest.raises(RecordedDataError, match=message):
        execute("import", ImportSettings(), tmp_path / "out", {"recorded": path})
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_non_utf8_bytes_name_the_byte(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"instruction": "caf\xe9", "output": "x"}]'.encode("latin-1"))
    with pytest.raises(RecordedDataError, match=r"latin1\.json: not UTF-8 at byte 21"):
        execute("import", ImportSettings(), tmp_path / "out", {"recorded": path})


def test_broken_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n{"instruction": \n')
    with pytest.raises(RecordedDataError, match=r"broken\.jsonl: invalid JSON at line 2 column 17"):
        execute("import", ImportSettings(), tmp_path / "out", {"recorded": path})


def test_content_problems_become_ledger_rows_not_drops(tmp_path):
    rows = [
        {"instruction": "q0", "output": ["", "2 + 2 = 4. The answer is 4."], "label": "4"},
        {"instruction": "q1", "output": ["The answer is 7."], "label": "not an answer"},
        {"instruction": "q2", "output": ["1 + 1 = 2. " * 100_000 + "The answer is 2."], "label": 2},
        {"instruction": "q3", "output": "The answer is 5."},  # no label at all
    ]
    judged = import_and_judge(tmp_path, write_json(tmp_path / "rows.json", rows))
    verdicts = [(r["question_id"], r["sample_index"], r["verdict"]) for r in judged]
    assert verdicts == [
        ("rows-0", 0, "empty"),
        ("rows-0", 1, "correct"),
        ("rows-1", 0, "bad_label"),
        ("rows-2", 0, "over_long"),
        ("rows-3", 0, "no_gold_answer"),
    ]
    ledger = pq.read_table(output("judge", tmp_path / "jud", "rejections")).to_pylist()
    assert len(ledger) == 4  # every row but the correct one, each with its reason


def test_json_jsonl_and_parquet_import_the_same_rows(tmp_path):
    import pyarrow as pa

    rows = [
        {"instruction": "q", "output": ["a. The answer is 1.", "b. The answer is 1."], "label": "1"},
        {"instruction": "r", "output": ["c. The answer is 2."], "label": "2"},
    ]
    write_json(tmp_path / "r.json", rows)
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    imported = []
    for name in ("r.json", "r.jsonl", "r.parquet"):
        execute("import", ImportSettings(), tmp_path / name.replace(".", "_"), {"recorded": tmp_path / name})
        table = pq.read_table(output("import", tmp_path / name.replace(".", "_"), "samples"))
        imported.append([(r["question"], r["answer"], r["sample_index"], r["rationale"]) for r in table.to_pylist()])
    assert imported[0] == imported[1] == imported[2]
    assert len(imported[0]) == 3


@needs_shared
def test_mcckd_svamp_file_yields_7000_rows_for_700_questions(tmp_path):
    judged = import_and_judge(tmp_path, SHARED_DATA / "mcckd" / "SVAMP" / "train.json")
    assert len(judged) == 7000 and len({r["question_id"] for r in judged}) == 700
    correct = sum(r["verdict"] == "correct" for r in judged)
    duplicates = sum(r["verdict"] == "duplicate" for r in judged)
    # The data README says about 67% reach the gold label, read the way the authors' scripts read them
    # (the last number). Read for the committed answer (conclusions that restate other quantities,
    # trailing remarks, parentheticals), about 72% do; the hand-labelled set in tests/data checks
    # that these verdicts are right. Exact duplicates are set aside.
    assert 0.70 < correct / 7000 < 0.74 and 0.72 < (correct + duplicates) / 7000 < 0.76


@needs_shared
def test_gsm8k_extraction_agrees_with_predict_field():
    rows = json.loads((SHARED_DATA / "mcckd" / "GSM8K" / "dev.json").read_text())
    agree = sum(answers_match(extract_answer(r["output"]), r["predict"]) for r in rows)
    assert agree / len(rows) >= 0.995, f"{agree}/{len(rows)}"


@needs_shared
def test_csqa_labels_are_choices():
    rows = json.loads((SHARED_DATA / "mcckd" / "CSQA" / "dev.json").read_text())
    assert all(answers_match(extract_answer(f"So the answer is ({r['label']}).", "choice"), r["label"]) for r in rows)


def test_a_labels_file_fills_missing_gold_answers_by_question_text(tmp_path):
    rows = [
        {"instruction": "How many  apples?", "output": "2 + 2 = 4. The answer is 4"},  # label from the file
        {"instruction": "How many pears?", "output": "The answer is 3", "label": "3"},  # its own label wins
        {"instruction": "How many plums?", "output": "The answer is 5"},  # in no file: no gold answer
    ]
    labels = write_json(
        tmp_path / "labels.json",
        [{"question": "how many apples?", "answer": 4}, {"question": "How many pears?", "answer": "9"}],
    )
    execute(
        "import",
        ImportSettings(),
        tmp_path / "imp",
        {"recorded": write_json(tmp_path / "r.json", rows), "labels": labels},
    )
    imported = pq.read_table(output("import", tmp_path / "imp", "samples")).to_pylist()
    assert [r["answer"] for r in imported] == ["4", "3", ""]
    summary = json.loads((tmp_path / "imp" / "manifest.json").read_text())["summary"]
    assert summary["labels_filled"] == 1 and summary["unlabelled_questions"] == 1
    execute("judge", JudgeSettings(), tmp_path / "jud", {"samples": tmp_path / "imp"})
    verdicts = [r["verdict"] for r in pq.read_table(output("judge", tmp_path / "jud", "judged")).to_pylist()]
    assert verdicts == ["correct", "correct", "no_gold_answer"]


def test_a_labels_file_with_two_answers_for_one_question_names_both_rows(tmp_path):
    labels = write_json(
        tmp_path / "labels.json",
        [{"question": "Q?", "answer": 1}, {"question": "x"}, {"question": " q? ", "answer": 2}],
    )
    recorded = write_json(tmp_path / "r.json", [{"instruction": "Q?", "output": "The answer is 1"}])
    with pytest.raises(RecordedDataError, match=r"labels\.json: row 1: missing field 'label' or 'answer'"):
        execute("import", ImportSettings(), tmp_path / "out", {"recorded": recorded, "labels": labels})
    write_json(labels, [{"question": "Q?", "answer": 1}, {"question": " q? ", "answer": 2}])
    with pytest.raises(RecordedDataError, match=r"labels\.json: row 1: field 'answer' is '2', but row 0 gave '1'"):
        execute("import", ImportSettings(), tmp_path / "out", {"recorded": recorded, "labels": labels})


@pytest.mark.parametrize("name, text", [("labels.json", "[]"), ("labels.jsonl", "")])
def test_an_empty_labels_file_leaves_every_unlabelled_question_counted_not_dropped(tmp_path, name, text):
    labels = tmp_path / name
    labels.write_text(text)
    rows = [{"instruction": "How many apples?", "output": "The answer is 4"}, {"instruction": "Q?", "output": "1"}]
    recorded = write_json(tmp_path / "r.json", rows)
    summary = execute("import", ImportSettings(), tmp_path / "imp", {"recorded": recorded, "labels": labels})
    assert summary["labels_filled"] == 0 and summary["unlabelled_questions"] == 2
    execute("judge", JudgeSettings(), tmp_path / "jud", {"samples": tmp_path / "imp"})
    verdicts = [r["verdict"] for r in pq.read_table(output("judge", tmp_path / "jud", "judged")).to_pylist()]
    assert verdicts == ["no_gold_answer", "no_gold_answer"]
