"""Degenerate and malformed input through import -> judge -> select -> decontaminate (no test set:
everything passes) -> materialize.

Every degenerate case goes through every stage (called as the command line calls it, in process),
each writing a valid (possibly empty) output in which rows in = rows out + ledger rows. Every
malformed case stops at one stage with exit status 2 and one line on stderr naming the file, the
row and the field: those run as ``python -m mcckd STAGE`` in its own process, as a stage container
runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_schemas import SAMPLES
from mcckd.__main__ import parse_settings
from mcckd.paths import PROJECT_ROOT
from mcckd.stages import STAGES, execute, output
from tests.test_curation_stages import sample_row

CHOICES = "Where do you keep money? Answer Choices:\nA. bank\nB. river\nC. tree\nD. cloud\nE. shoe"
PIPELINE = [  # stage, its input name (an input another stage writes is named after that stage's output)
    ("import", "recorded"),
    ("judge", "samples"),
    ("select", "judged"),
    ("decontaminate", "selected"),
    ("materialize", "selected"),
]
CHAIN = [  # stage, input name, the file of the previous stage it reads, its main output: as declared
    (
        stage,
        name,
        STAGES[PIPELINE[i - 1][0]].outputs[name].file if i else None,
        STAGES[stage].outputs[STAGES[stage].main].file,
    )
    for i, (stage, name) in enumerate(PIPELINE)
]


def q(i: int, outputs: object, label: object = "8", **extra) -> dict:
    return {
        "instruction": f"Tom has 5 apples and buys 3 more ({i}). How many?",
        "output": outputs,
        "label": label,
    } | extra


CASES = {
    "zero_rows": [],
    "one_row": [q(0, "5 + 3 = 8. The answer is 8.")],
    "all_correct": [q(i, [f"5 + 3 = 8. The answer is 8.{' Nice.' * k}" for k in range(3)]) for i in range(4)],
    "all_wrong": [q(i, ["5 + 3 = 9. The answer is 9.", "So he has 7 apples."]) for i in range(3)],
    "one_rationale_each_k3": [q(i, ["He has 5 + 3 = 8 apples."]) for i in range(5)],
    "duplicate_ids_same_question": [
        q(0, "5 + 3 = 8. The answer is 8.", id="tom"),
        q(0, "Start at 5, add 3, get 8.", id="tom"),
        q(0, "Five plus three is eight.", id="tom"),
    ],
    "mixed_answer_kinds": [
        q(0, "5 + 3 = 8. The answer is 8."),
        {"instruction": CHOICES, "output": ["Money goes in a bank. So the answer is (A)."], "label": "A"},
        {"instruction": "Is water wet?", "output": ["Yes, water is wet."], "label": "yes"},
        {"instruction": "Simplify x*x.", "output": ["x*x = x^2. The answer is x^2."], "label": "x^2"},
        {"instruction": "Pick one.", "output": ["The answer is 4."], "label": "not an answer"},
        {"instruction": "No label here.", "output": ["The answer is 4."]},
    ],
    "unicode_and_control_characters": [
        q(0, "5 + 3 = 8 🍎\x00\x07 so \u200bthe answer is ８."),
        q(1, "مرحبا 5 + 3 = 8.\r\n\tThe answer is 8.\x1b[0m"),
        {"instruction": "Ünïcödé \x01 question?", "output": "ответ: 4 \ufeff The answer is 4.", "label": "4"},
    ],
    "one_megabyte_rationale": [q(0, ["5 + 3 = 8. " * 100_000 + "The answer is 8.", "5 + 3 = 8. The answer is 8."])],
    "numeric_labels_as_json_numbers": [
        q(0, "The answer is 8.", label=8),
        q(1, "Half of 5 is 2.5. The answer is 2.5.", label=2.5),
        {"instruction": "Is 8 even?", "output": "8 is even, so yes.", "label": True},
        q(3, "The answer is 8.", label=float("nan")),
    ],
    "empty_rationale_list": [q(0, []), q(1, ["The answer is 8."])],
    "empty_and_whitespace_rationales": [q(0, ["", "   \n\t", "The answer is 8."])],
}


def run_cli(stage: str, inputs: dict[str, Path], out: Path, settings: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mcckd", stage, "--out", str(out)]
    cmd += [arg for name, path in inputs.items() for arg in ("--in", f"{name}={path}")]
    cmd += ["--settings", settings] if settings else []
    return subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)


def rows_of(path: Path) -> int:
    return pq.read_metadata(path).num_rows


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_stage_accounts_for_every_row(tmp_path, case):
    recorded = tmp_path / f"{case}.json"
    recorded.write_text(json.dumps(CASES[case]))  # NaN is written as JSON NaN, which Python's json reads
    previous = recorded
    for stage, input_name, _, main in CHAIN:
        out = tmp_path / stage
        # In process, as the CLI calls it (the CLI's own path is tested by the malformed-input cases).
        settings = parse_settings(stage, '{"k": 3}' if stage == "select" else None)
        summary = execute(stage, settings, out, {input_name: previous})
        assert summary["rows_in"] == summary["rows_out"] + summary["rejected"], (stage, summary)
        ledger = output(stage, out, "rejections") if "rejections" in STAGES[stage].outputs else None
        assert (rows_of(ledger) if ledger else 0) == summary["rejected"], stage
        if stage == "materialize":
            rationales = sum(len(r) for r in pq.read_table(out / main, columns=["rationales"]).column(0).to_pylist())
            assert rationales == summary["rows_out"]
        elif stage == "judge":
            assert rows_of(out / main) == summary["rows_in"]  # the judged output keeps every row, with its verdict
        else:
            assert rows_of(out / main) == summary["rows_out"]
        previous = out / main
    judged = pq.read_table(output("judge", tmp_path / "judge", "judged")).to_pylist()
    verdicts = sorted(r["verdict"] for r in judged)
    expected = EXPECTED_VERDICTS.get(case)
    if expected is not None:
        assert verdicts == sorted(expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_holdout_accounts_for_every_sample(tmp_path, case):
    """Each degenerate case through import -> holdout: every sample goes on to judge or is a validation
    question's; a validation question has a gold answer, and none of its samples goes on."""
    recorded = tmp_path / f"{case}.json"
    recorded.write_text(json.dumps(CASES[case]))
    execute("import", parse_settings("import", None), tmp_path / "import", {"recorded": recorded})
    samples = output("import", tmp_path / "import")
    out = tmp_path / "holdout"
    summary = execute("holdout", parse_settings("holdout", '{"fraction": 0.5}'), out, {"samples": samples})
    assert summary["samples"] + summary["held_out_samples"] == rows_of(samples)
    assert summary["samples"] == rows_of(output("holdout", out))
    validation = pq.read_table(output("holdout", out, "validation")).to_pylist()
    kept = set(pq.read_table(output("holdout", out), columns=["question_id"]).column(0).to_pylist())
    assert len(validation) == summary["validation_questions"] and not {v["question_id"] for v in validation} & kept
    assert all(v["answer"] not in ("", None) for v in validation)


EXPECTED_VERDICTS = {
    "zero_rows": [],
    "one_row": ["correct"],
    "all_correct": ["correct"] * 12,
    "all_wrong": ["wrong_answer"] * 6,
    "one_rationale_each_k3": ["correct"] * 5,
    "duplicate_ids_same_question": ["correct"] * 3,
    "mixed_answer_kinds": ["correct"] * 4 + ["bad_label", "no_gold_answer"],
    "unicode_and_control_characters": ["correct"] * 3,
    "one_megabyte_rationale": ["over_long", "correct"],
    "numeric_labels_as_json_numbers": ["correct"] * 3 + ["bad_label"],
    "empty_rationale_list": ["correct"],
    "empty_and_whitespace_rationales": ["empty", "empty", "correct"],
}


def test_duplicate_ids_merge_into_one_question(tmp_path):
    recorded = tmp_path / "dup.json"
    recorded.write_text(json.dumps(CASES["duplicate_ids_same_question"]))
    assert run_cli("import", {"recorded": recorded}, tmp_path / "imp").returncode == 0
    rows = pq.read_table(output("import", tmp_path / "imp", "samples")).to_pylist()
    assert [(r["question_id"], r["sample_index"]) for r in rows] == [("tom", 0), ("tom", 1), ("tom", 2)]


def _samples_with(row: int, field: str, value: object) -> list[dict]:
    rows = [sample_row("a", 0, "The answer is 8."), sample_row("a", 1, "So 8."), sample_row("b", 0, "The answer is 8.")]
    rows[row][field] = value
    return rows


MALFORMED = [
    # (stage, file name, how to write it, the line the stage must print)
    (
        "import",
        "rows.json",
        '[{"instruction": "q", "output": ["a"]}, {"instruction": "q2"}]',
        r"rows.json: row 1: missing field 'output'",
    ),
    ("import", "rows.json", '[{"instruction": "q", "output": [1]}]', r"rows.json: row 0: field 'output' must be text"),
    (
        "import",
        "rows.json",
        '[{"instruction": 5, "output": "a"}]',
        r"rows.json: row 0: field 'instruction' must be text",
    ),
    (
        "import",
        "rows.json",
        '[{"instruction": "q", "output": "a", "label": [1]}]',
        r"row 0: field 'label' must be text",
    ),
    (
        "import",
        "rows.json",
        '[{"instruction": "q", "output": "a", "id": null}]',
        r"row 0: field 'id' must be non-empty",
    ),
    ("import", "rows.json", '{"instruction": "q"}', r"rows.json: expected a JSON list of rows, got dict"),
    ("import", "rows.json", '[{"instruction": "q", "output": "a"},', r"rows.json: invalid JSON at line 1 column 38"),
    (
        "import",
        "rows.jsonl",
        '{"instruction": "q", "output": "a"}\n{"instruction": "q2", "output": }\n',
        r"rows.jsonl: invalid JSON at line 2",
    ),
    ("import", "rows.csv", "instruction,output\nq,a\n", r"rows.csv: unsupported format '.csv'"),
    ("import", "rows.parquet", "not parquet at all", r"rows.parquet: not a readable Parquet file"),
    (
        "import",
        "rows.json",
        '[{"id": "x", "instruction": "q", "output": "a"}, {"id": "x", "instruction": "other", "output": "b"}]',
        r"rows.json: row 1: field 'instruction' differs from row 0, which has the same id 'x'",
    ),
    (
        "judge",
        "samples_in.parquet",
        _samples_with(1, "sample_index", 0),
        r"samples_in.parquet: row 1: field 'sample_index': sample .* repeats row 0",
    ),
    (
        "judge",
        "samples_in.parquet",
        _samples_with(1, "answer", "9"),
        r"samples_in.parquet: row 1: field 'answer': question id 'a' has a different answer in row 0",
    ),
    (
        "judge",
        "samples_in.parquet",
        _samples_with(2, "rationale", None),
        r"samples_in.parquet: row 2: field 'rationale' is null",
    ),
    (
        "judge",
        "samples_in.parquet",
        pa.table({"question_id": ["a"]}),
        r"samples_in.parquet: missing column 'question'",
    ),
    (
        "select",
        "judged_in.parquet",
        pa.table({"question_id": ["a"]}),
        r"judged_in.parquet: missing column 'question'",
    ),
    ("decontaminate", "selected_in.parquet", "\x00\x01garbage", r"selected_in.parquet: not a readable Parquet file"),
    ("materialize", "selected_in.parquet", "\x00\x01garbage", r"selected_in.parquet: not a readable Parquet file"),
]


@pytest.mark.parametrize(
    ("stage", "name", "content", "message"), MALFORMED, ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)]
)
def test_malformed_input_stops_with_one_line(tmp_path, stage, name, content, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, pa.Table):
        pq.write_table(content, path)
    else:  # sample rows, written without the stages' own checks
        pq.write_table(pa.Table.from_pylist(content, schema=SAMPLES), path)
    input_name = next(i for s, i, _, _ in CHAIN if s == stage)
    done = run_cli(stage, {input_name: path}, tmp_path / "out")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mcckd {stage}: error: ") and "Traceback" not in done.stderr
    assert re.search(message, last), last
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert "Traceback" in (tmp_path / "out.log").read_text()  # the traceback is in the stage's log


def test_debug_prints_the_traceback(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[{"instruction": "q", "output": [1]}]')
    cmd = [sys.executable, "-m", "mcckd", "import", "--in", f"recorded={path}", "--out", str(tmp_path / "o"), "--debug"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 2 and "Traceback" in done.stderr and "RecordedDataError" in done.stderr


def test_bad_settings_name_the_field(tmp_path):
    done = run_cli("select", {"judged": tmp_path / "x.parquet"}, tmp_path / "o", '{"k": "many"}')
    assert done.returncode == 2
    assert "field 'k'" in done.stderr.strip().splitlines()[-1]
