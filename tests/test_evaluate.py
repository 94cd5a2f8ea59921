"""The evaluate stage with real vLLM: greedy and self-consistency on the demo teacher, test sets in
every accepted format, and every prediction row checked against the answer reader. Nothing is mocked.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from data_schemas import InputError
from flows.demo import SMALL_ENGINE
from mcckd.answers import answer_kind, answers_match, extract_answer
from mcckd.demo_world.assets import TEACHER_DIR
from mcckd.demo_world.problems import generate_split
from mcckd.stages import execute, output
from mcckd.stages.evaluate import EvaluateSettings, read_questions, vote
from tests.demo_questions import questions_file
from tests.shared_data import SHARED_DATA, needs_shared


def test_vote_takes_the_majority_of_answered_samples():
    assert vote(["3", None, "5", "5"]) == ("5", 2)
    assert vote(["3", "5"]) == ("3", 1)  # a tie goes to the first answer seen
    assert vote([None, None]) == (None, 0)
    assert vote([]) == (None, 0)


def test_test_sets_in_every_format_read_the_same(tmp_path):
    problems = generate_split("ood_steps", 3, seed=3)
    parquet = questions_file(tmp_path / "q.parquet", 3)
    expected = pq.read_table(parquet).to_pylist()
    assert read_questions(parquet) == expected
    # The MCC-KD authors' JSON: instruction / output / label, the label a JSON number.
    records = [{"instruction": p.question, "output": [], "label": p.answer} for p in problems]
    (tmp_path / "mcckd.json").write_text(json.dumps(records))
    rows = read_questions(tmp_path / "mcckd.json")
    assert [r["answer"] for r in rows] == [str(p.answer) for p in problems]
    assert [r["question_id"] for r in rows] == ["mcckd-0", "mcckd-1", "mcckd-2"]
    lines = [
        json.dumps({"id": f"x{i}", "question": p.question, "answer": str(p.answer)}) for i, p in enumerate(problems)
    ]
    (tmp_path / "set.jsonl").write_text("\n".join(lines))
    assert [r["question_id"] for r in read_questions(tmp_path / "set.jsonl")] == ["x0", "x1", "x2"]
    Dataset.from_list(expected).save_to_disk(str(tmp_path / "hf"))
    assert read_questions(tmp_path / "hf") == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"instruction": "q"}]', "row 0: missing field 'label' or 'answer'"),
        ('[{"instruction": "", "label": "1"}]', "row 0: field 'instruction' must be non-empty text"),
        ('[{"id": 1, "question": "a", "answer": 1}, {"id": 1, "question": "b", "answer": 2}]', "row 1: field 'id'"),
        ('{"question": "a"}', "expected a JSON list"),
    ],
)
def test_a_bad_test_set_names_file_row_and_field(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        read_questions(path)
    assert str(path) in str(error.value)


def check_rows(rows: list[dict], sets: dict[str, list[dict]], samples: int, model_name: str) -> None:
    """Every question of every set has exactly one row, and its verdict follows from its generations."""
    assert sorted((r["split"], r["question_id"]) for r in rows) == sorted(
        (name, q["question_id"]) for name, qs in sets.items() for q in qs
    )
    for r in rows:
        gold = {q["question_id"]: q for q in sets[r["split"]]}[r["question_id"]]
        assert (r["model"], r["question"], r["answer"]) == (model_name, gold["question"], gold["answer"])
        assert len(r["generations"]) == samples and r["generation"] == r["generations"][0]
        kind = answer_kind(r["answer"])
        read = [extract_answer(t, kind, r["question"]) for t in r["generations"]]
        assert (r["predicted_answer"], r["votes"]) == vote(read)
        assert r["answered"] == (r["predicted_answer"] is not None)
        assert r["correct"] == answers_match(r["predicted_answer"], r["answer"], kind)
        assert r["finish_reason"] in {"stop", "length"}


@pytest.mark.slow
def test_greedy_and_self_consistency_on_a_real_engine(tmp_path):
    sets = {"id": tmp_path / "id.parquet", "ood": tmp_path / "ood.json"}
    questions_file(sets["id"], 6)
    ood = generate_split("ood_templates", 5, seed=11)
    sets["ood"].write_text(
        json.dumps([{"id": f"o{i}", "question": p.question, "answer": p.answer} for i, p in enumerate(ood)])
    )
    expected = {name: read_questions(path) for name, path in sets.items()}

    greedy = EvaluateSettings(model=TEACHER_DIR, model_name="teacher", template="demo_teacher", vllm=SMALL_ENGINE)
    summary = execute("evaluate", greedy, tmp_path / "greedy", sets)
    rows = pq.read_table(output("evaluate", tmp_path / "greedy", "predictions")).to_pylist()
    check_rows(rows, expected, 1, "teacher")
    accuracy = json.loads(output("evaluate", tmp_path / "greedy", "accuracy").read_text())
    for name in sets:
        mine = [r for r in rows if r["split"] == name]
        assert accuracy[name] == summary["accuracy"][name] == sum(r["correct"] for r in mine) / len(mine)
        assert summary["unanswered"][name] == sum(not r["answered"] for r in mine) / len(mine)
    assert accuracy["id"] >= 0.8  # the demo teacher solves its own world

    voted = greedy.model_copy(update={"samples": 5, "temperature": 1.0, "model_name": "teacher-sc"})
    summary = execute("evaluate", voted, tmp_path / "sc", sets)
    rows = pq.read_table(output("evaluate", tmp_path / "sc", "predictions")).to_pylist()
    check_rows(rows, expected, 5, "teacher-sc")
    assert summary["samples"] == 5
    assert any(len(set(r["generations"])) > 1 for r in rows)  # sampled, not five greedy copies


@needs_shared
@pytest.mark.parametrize(
    ("name", "rows", "kind"),
    [("SVAMP", 150, "number"), ("GSM8K", 660, "number"), ("ASDiv", 313, "number"), ("CSQA", 1221, "choice")],
)
def test_the_papers_test_sets_read_as_questions(name, rows, kind):
    questions = read_questions(SHARED_DATA / "mcckd" / name / "dev.json")
    assert len(questions) == rows == len({q["question_id"] for q in questions})
    assert all(q["question"] and answer_kind(q["answer"]) == kind for q in questions)


def test_an_empty_test_set_has_no_questions(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    assert read_questions(tmp_path / "empty.json") == []
