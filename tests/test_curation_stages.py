"""judge -> select -> materialize on real Parquet files, through the same entry point the CLI uses."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_schemas import SAMPLES, TRAINSET, SchemaError, read_table, write_table
from mcckd.__main__ import main as cli
from mcckd.stages import execute, output
from mcckd.stages.judge import JudgeSettings
from mcckd.stages.materialize import MaterializeSettings, with_answer_sentence
from mcckd.stages.select import SelectSettings, jaccard_matrix, minhash_matrix, select_diverse, similarity_matrix


def sample_row(qid: str, i: int, text: str, answer: str = "8", finish: str = "stop") -> dict:
    return {
        "question_id": qid,
        "question": f"question {qid}",
        "answer": answer,
        "teacher": "t",
        "teacher_fingerprint": "f",
        "template": "demo_teacher",
        "granularity": "any",
        "cot_format": "any",
        "prompt": "p",
        "sample_index": i,
        "rationale": text,
        "finish_reason": finish,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "temperature": 0.8,
        "top_p": 1.0,
        "max_tokens": 10,
        "seed": 0,
    }


ROWS = [
    sample_row("a", 0, "5 + 3 = 8. The answer is 8."),
    sample_row("a", 1, "5 + 3 = 8. The answer is 8."),  # duplicate of 0
    sample_row("a", 2, "Start with 5. Add 3: 5 + 3 = 8. The answer is 8."),
    sample_row("a", 3, "Let x = 5. x = x + 3 = 8. The answer is 8."),
    sample_row("a", 4, "Start with 5. Add 3: 5 + 3 = 8. Then 8. The answer is 8."),
    sample_row("a", 5, "5 + 3 = 9. The answer is 9."),  # wrong
    sample_row("b", 0, "I am not sure."),  # no answer
    sample_row("b", 1, "3 + 5 = 8. The answer", finish="length"),  # truncated
    sample_row("b", 2, "3 + 5 = 8. Therefore, the answer is 8 ."),  # correct, non-canonical ending
    sample_row("c", 0, "The answer is 2.", answer="3"),  # no correct rationale at all
]


@pytest.fixture
def samples_file(tmp_path):
    return write_table(ROWS, tmp_path / "samples_in.parquet", SAMPLES)


def test_judge_select_materialize(tmp_path, samples_file):
    judge_dir, select_dir, mat_dir = tmp_path / "judge", tmp_path / "select", tmp_path / "mat"
    summary = execute("judge", JudgeSettings(), judge_dir, {"samples": samples_file})
    assert summary["verdicts"] == {
        "correct": 5,
        "duplicate": 1,
        "wrong_answer": 2,
        "no_answer": 1,
        "truncated": 1,
    }
    ledger = pq.read_table(output("judge", judge_dir, "rejections")).to_pylist()
    assert len(ledger) == len(ROWS) - 5  # every non-correct row has a reason
    assert {r["reason"] for r in ledger} == {"duplicate", "wrong_answer", "no_answer", "truncated"}

    execute("select", SelectSettings(k=3), select_dir, {"judged": judge_dir})
    selected = pq.read_table(output("select", select_dir, "selected")).to_pylist()
    kept_a = sorted(r["sample_index"] for r in selected if r["question_id"] == "a")
    # Of the four correct rationales of "a", the two near-identical "Start with 5" ones are the
    # most similar pair: one of them must go.
    assert len(kept_a) == 3 and not {2, 4} <= set(kept_a)
    outcomes = {
        r["question_id"]: r["outcome"] for r in pq.read_table(output("select", select_dir, "outcomes")).to_pylist()
    }
    assert outcomes == {"a": "full", "b": "kept_fewer", "c": "no_correct"}
    select_ledger = pq.read_table(output("select", select_dir, "rejections")).to_pylist()
    assert [(r["question_id"], r["reason"]) for r in select_ledger] == [("a", "not_diverse_enough")]

    execute("materialize", MaterializeSettings(), mat_dir, {"selected": select_dir})
    train = {r["question_id"]: r for r in pq.read_table(output("materialize", mat_dir, "trainset")).to_pylist()}
    assert set(train) == {"a", "b"}
    for row in train.values():
        for text, span in zip(row["rationales"], row["answer_spans"], strict=True):
            assert text.endswith("The answer is 8.")
            assert text[span["start"] : span["end"]] == "8"
    assert train["b"]["rationales"] == ["3 + 5 = 8. The answer is 8."]


def test_select_drop_policy_records_every_dropped_rationale(tmp_path, samples_file):
    execute("judge", JudgeSettings(), tmp_path / "j", {"samples": samples_file})
    execute("select", SelectSettings(k=3, fewer_than_k="drop"), tmp_path / "s", {"judged": tmp_path / "j"})
    outcomes = {r["question_id"]: r for r in pq.read_table(output("select", tmp_path / "s", "outcomes")).to_pylist()}
    assert outcomes["b"]["outcome"] == "dropped_fewer" and outcomes["b"]["selected"] == 0
    ledger = pq.read_table(output("select", tmp_path / "s", "rejections")).to_pylist()
    assert ("b", "fewer_than_k") in {(r["question_id"], r["reason"]) for r in ledger}


def test_cli_runs_one_stage_and_is_idempotent(tmp_path, samples_file, capsys):
    out = tmp_path / "judged"
    cli(["judge", "--in", f"samples={samples_file}", "--out", str(out), "--settings", '{"reject_truncated": false}'])
    first = (out / "manifest.json").read_text()
    assert '"reject_truncated": false' in first
    cli(["judge", "--in", f"samples={samples_file}", "--out", str(out)])  # complete: no work, same folder
    assert (out / "manifest.json").read_text() == first
    assert '"correct"' in capsys.readouterr().out


@pytest.mark.parametrize("similarity", ["jaccard", "minhash", "embedding"])
def test_select_diverse_prefers_dissimilar_texts(similarity):
    texts = [
        "start with five then add three to get eight",
        "start with five then add three to get eight now",
        "let x be five and x plus three is eight",
    ]
    sim = similarity_matrix(texts, SelectSettings(k=2, ngram=2, similarity=similarity, num_perm=256))
    picks = [i for i, _ in select_diverse(sim, 2)]
    assert 2 in picks and len(picks) == 2


def test_minhash_estimates_jaccard():
    texts = [f"w{i} " * 1 + " ".join(f"t{j}" for j in range(i, i + 60)) for i in range(0, 40, 8)]
    exact = jaccard_matrix(texts, 3)
    estimate = minhash_matrix(texts, 3, num_perm=512)
    assert np.abs(exact - estimate).max() < 0.1


def test_answer_sentence_is_appended_when_missing():
    text, (s, e), rewritten = with_answer_sentence("So she has 12 apples", "12")
    assert rewritten and text == "So she has 12 apples. The answer is 12." and text[s:e] == "12"


def test_wrong_column_type_names_file_and_column(tmp_path):
    bad = pa.table({name: pa.array([], type=pa.string()) for name in SAMPLES.names})
    path = tmp_path / "bad.parquet"
    pq.write_table(bad, path)
    with pytest.raises(SchemaError, match=r"bad\.parquet: column 'sample_index' has type string, expected int32"):
        read_table(path, SAMPLES)


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "short.parquet"
    pq.write_table(pa.table({"question_id": ["x"]}), path)
    with pytest.raises(SchemaError, match=r"short\.parquet: missing column 'question'"):
        read_table(path, SAMPLES)


def test_training_set_loads_as_hf_dataset(tmp_path, samples_file):
    from datasets import Dataset

    execute("judge", JudgeSettings(), tmp_path / "j", {"samples": samples_file})
    execute("select", SelectSettings(k=3), tmp_path / "s", {"judged": tmp_path / "j"})
    execute("materialize", MaterializeSettings(), tmp_path / "m", {"selected": tmp_path / "s"})
    ds = Dataset.from_parquet(
        str(output("materialize", tmp_path / "m", "trainset")), cache_dir=str(tmp_path / "hf-cache")
    )
    assert ds.num_rows == 2 and ds.column_names == TRAINSET.names
    row = ds[0]
    assert row["rationales"][0][row["answer_spans"][0]["start"] : row["answer_spans"][0]["end"]] == row["answer"]
