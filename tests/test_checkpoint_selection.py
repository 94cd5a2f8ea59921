"""Checkpoint selection as the MCC-KD authors do it, as stages: the holdout stage sets validation
questions aside before curation (never trained on, decontaminated against like a test set), the
train stage keeps every epoch, each is scored on the validation questions, ``choose`` keeps the best
(a tie goes to the earliest), and ``export`` makes it a folder plain transformers loads, with a card.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from data_schemas import (
    CHECKPOINTS,
    JUDGED,
    PREDICTIONS,
    QUESTIONS,
    SAMPLES,
    SELECTED,
    TRAINSET,
    read_table,
    write_table,
)
from flows.config import DistillConfig, StudentMethod
from flows.plan import plan
from mcckd.demo_world.assets import STUDENT_BASE_DIR
from mcckd.demo_world.problems import TRAIN_FILE, generate_split, write_rationale
from mcckd.stages import execute, output
from mcckd.stages.choose import ChooseSettings
from mcckd.stages.decontaminate import DecontaminateSettings
from mcckd.stages.export import CARD, ExportSettings
from mcckd.stages.holdout import HoldoutSettings
from mcckd.stages.import_recorded import ImportSettings
from mcckd.stages.train import TrainSettings
from mcckd.training.config import TrainConfig
from tests.test_curation_stages import sample_row


def samples(n: int, without_gold: int = 0) -> list[dict]:
    rows = [sample_row(f"q{i}", j, f"{i} + {j} = 8. The answer is 8.") for i in range(n) for j in range(3)]
    rows += [sample_row(f"nogold{i}", 0, "The answer is 8.", answer="") for i in range(without_gold)]
    return rows


def as_selected(samples: list[dict], path: Path) -> Path:
    """Sample rows as the select stage would keep them: every one correct (what decontaminate reads)."""
    extra = {"predicted_answer": "8", "verdict": "correct", "selection_rank": 0, "max_similarity": 0.0}
    return write_table([r | extra for r in samples], path, SELECTED)


def demo_rationales(train: Path, n_train: int, n_test: int, out: Path) -> Path:
    """Two correct rationales for each question of the demo world's ``train`` file, written as the demo
    world writes them (plain format, granularities 2 and 3), in the MCC-KD authors' JSON (no labels:
    the import joins the gold answers from the questions file)."""
    problems = {p.question: p for p in generate_split("id", n_test + n_train, 0)}  # train = all but the first
    rng = random.Random(0)
    records = [
        {
            "id": row["question_id"],
            "instruction": row["question"],
            "output": [write_rationale(problems[row["question"]], "plain", level, rng) for level in (2, 3)],
        }
        for row in read_table(train, QUESTIONS).to_pylist()
    ]
    out.write_text(json.dumps(records))
    return out


def test_holdout_sets_aside_an_exact_share_of_questions_never_seen_by_training(tmp_path):
    path = write_table(samples(40, without_gold=5), tmp_path / "in.parquet", SAMPLES)
    out = tmp_path / "holdout"
    summary = execute("holdout", HoldoutSettings(fraction=0.25), out, {"samples": path})
    validation = read_table(output("holdout", out, "validation"), QUESTIONS).to_pylist()
    training = read_table(output("holdout", out), SAMPLES).column("question_id").to_pylist()
    held = {q["question_id"] for q in validation}
    assert len(held) == 10 == summary["validation_questions"]  # 25% of the 40 with a gold answer
    assert not held & set(training)  # no sample of a validation question goes on to judge
    assert not any(q.startswith("nogold") for q in held) and summary["without_gold_answer"] == 5
    assert len(training) == 3 * 30 + 5 == summary["samples"]
    assert all(q["answer"] == "8" and q["question"] == f"question {q['question_id']}" for q in validation)

    # The split is a function of (seed, question id): a reordered file holds out the same questions.
    shuffled = write_table(samples(40, without_gold=5)[::-1], tmp_path / "rev.parquet", SAMPLES)
    again = tmp_path / "again"
    execute("holdout", HoldoutSettings(fraction=0.25), again, {"samples": shuffled})
    assert {q["question_id"] for q in read_table(output("holdout", again, "validation"), QUESTIONS).to_pylist()} == held
    other = tmp_path / "other"
    execute("holdout", HoldoutSettings(fraction=0.25, seed=1), other, {"samples": path})
    assert {q["question_id"] for q in read_table(output("holdout", other, "validation"), QUESTIONS).to_pylist()} != held


def test_questions_on_one_story_are_held_out_together_so_decontamination_removes_none(tmp_path):
    """SVAMP writes several questions on one story body: held out one by one, the rest of each story
    would be decontaminated away from training; held out by group (shared word 8-grams), none is."""
    stories = [f"Story {i} tells that Paco had {i} sweet cookies and {i + 6} salty cookies in a jar" for i in range(30)]
    rows = [
        sample_row(f"s{i}-{j}", 0, "The answer is 8.") | {"question": f"{story}. Question {j}?"}
        for i, story in enumerate(stories)
        for j in range(3)
    ]
    path = write_table(rows, tmp_path / "in.parquet", SAMPLES)
    out = tmp_path / "holdout"
    summary = execute("holdout", HoldoutSettings(fraction=0.2), out, {"samples": path})
    held = {q["question_id"] for q in read_table(output("holdout", out, "validation"), QUESTIONS).to_pylist()}
    assert len(held) == 18 == 3 * summary["validation_groups"]  # 20% of 90 = 18: six whole stories
    assert all({f"{q.split('-')[0]}-{j}" for j in range(3)} <= held for q in held)
    sel = as_selected(read_table(output("holdout", out), SAMPLES).to_pylist(), tmp_path / "selected.parquet")
    validation = output("holdout", out, "validation")
    checked = execute(
        "decontaminate", DecontaminateSettings(), tmp_path / "d", {"selected": sel, "validation": validation}
    )
    assert checked["contaminated"] == {"validation": 0}
    one_by_one = tmp_path / "single"
    execute("holdout", HoldoutSettings(fraction=0.2, group_ngram=None), one_by_one, {"samples": path})
    sel = as_selected(read_table(output("holdout", one_by_one), SAMPLES).to_pylist(), tmp_path / "s2.parquet")
    lost = execute(
        "decontaminate",
        DecontaminateSettings(),
        tmp_path / "d2",
        {"selected": sel, "validation": output("holdout", one_by_one, "validation")},
    )
    assert lost["contaminated"]["validation"] > 10  # the held-out questions' story siblings


def test_holdout_on_no_rows_and_a_question_that_disagrees_with_itself(tmp_path):
    empty = write_table([], tmp_path / "empty.parquet", SAMPLES)
    summary = execute("holdout", HoldoutSettings(), tmp_path / "h0", {"samples": empty})
    assert summary["validation_questions"] == summary["samples"] == 0
    bad = samples(2)
    bad[1]["answer"] = "9"
    path = write_table(bad, tmp_path / "bad.parquet", SAMPLES)
    with pytest.raises(ValueError, match=r"bad.parquet: row 1: question_id 'q0'"):
        execute("holdout", HoldoutSettings(), tmp_path / "h1", {"samples": path})


def test_validation_questions_are_decontaminated_against_like_a_test_set(tmp_path):
    """A training question sharing a word 8-gram with a validation question (SVAMP's shared story
    bodies) is removed, and the overlap counted under "validation"."""
    story = "Paco had 8 sweet cookies and 6 salty cookies in a jar on the table"
    selected = [
        sample_row("t1", 0, "The answer is 8.") | {"question": f"{story}. How many sweet ones?"},
        sample_row("t2", 0, "The answer is 8.") | {"question": "Jack had 8 pens. How many?"},
    ]
    sel = as_selected(selected, tmp_path / "selected.parquet")
    val = write_table(
        [{"question_id": "v1", "question": f"{story}. How many salty ones?", "answer": "6"}],
        tmp_path / "validation.parquet",
        QUESTIONS,
    )
    out = tmp_path / "decontaminate"
    summary = execute("decontaminate", DecontaminateSettings(), out, {"selected": sel, "validation": val})
    kept = read_table(output("decontaminate", out), SELECTED).column("question_id").to_pylist()
    assert kept == ["t2"] and summary["contaminated"] == {"validation": 1}


def test_the_plan_holds_out_validation_before_judge_and_decontaminates_against_it(tmp_path):
    questions = write_table([{"question_id": "q", "question": "x", "answer": "1"}], tmp_path / "q.parquet", QUESTIONS)
    config = DistillConfig(
        store=tmp_path / "store",
        recorded=questions,
        test_sets={"id": questions},
        validation=HoldoutSettings(fraction=0.2),
        students={
            "std_cot": StudentMethod(train=TrainSettings(base_model=STUDENT_BASE_DIR, loop=TrainConfig(epochs=3)))
        },
    )
    p = plan(config)
    holdout = p.curation.holdout
    assert [c.stage for c in p.curation] == ["holdout", "judge", "select", "decontaminate", "materialize"]
    assert p.curation.judge.inputs["samples"] == holdout.ref
    assert p.curation.decontaminate.inputs["validation"].input_path == output("holdout", holdout.out, "validation")
    [student] = p.students.values()
    assert student.train.settings.loop.keep_epochs and list(student.validations) == ["epoch-1", "epoch-2", "epoch-3"]
    for call in student.validations.values():  # the validation questions only: never a test set
        assert set(call.inputs) == {"validation"}
    assert p.evaluations["std_cot", 0].settings.model == output("choose", student.choose.out)
    assert set(p.exports) == {("std_cot", 0)}
    with pytest.raises(ValueError, match="may not be named 'validation'"):
        DistillConfig.model_validate(config.model_dump() | {"test_sets": {"validation": questions}})


def predictions(path: Path, correct: list[bool]) -> Path:
    rows = [
        {
            "model": "m",
            "split": "validation",
            "question_id": f"v{i}",
            "question": "q",
            "answer": "1",
            "generation": "g",
            "generations": ["g"],
            "predicted_answer": "1" if ok else "2",
            "votes": 1,
            "answered": True,
            "correct": ok,
        }
        | {"finish_reason": "stop"}
        for i, ok in enumerate(correct)
    ]
    return write_table(rows, path, PREDICTIONS)


def checkpoints(root: Path, n: int) -> Path:
    """n checkpoint folders, each the demo student (a real model folder)."""
    for e in range(1, n + 1):
        shutil.copytree(STUDENT_BASE_DIR, root / f"epoch-{e}")
    return root


@pytest.mark.parametrize(
    ("scores", "kept"),
    [
        ([[1, 0, 0], [1, 1, 0], [1, 0, 0]], "epoch-2"),  # the best by validation
        ([[1, 1, 0], [0, 0, 0], [1, 0, 1]], "epoch-1"),  # a tie goes to the earliest
        ([[0, 0, 0], [0, 0, 0], [0, 0, 0]], "epoch-1"),  # nothing right: still the earliest
    ],
)
def test_choose_keeps_the_best_checkpoint_by_validation_ties_to_the_earliest(tmp_path, scores, kept):
    folder = checkpoints(tmp_path / "checkpoints", 3)
    inputs = {
        f"epoch-{e}": predictions(tmp_path / f"p{e}.parquet", [bool(x) for x in s]) for e, s in enumerate(scores, 1)
    }
    out = tmp_path / "choose"
    summary = execute("choose", ChooseSettings(), out, {"checkpoints": folder} | inputs)
    assert summary["chosen"] == kept
    table = read_table(output("choose", out, "checkpoint_scores"), CHECKPOINTS).to_pylist()
    assert [r["checkpoint"] for r in table if r["chosen"]] == [kept]
    assert [r["accuracy"] for r in table] == [sum(s) / 3 for s in scores]
    weights = output("choose", out) / "model.safetensors"
    assert weights.stat().st_ino == (folder / kept / "model.safetensors").stat().st_ino  # linked, not copied
    assert output("choose", out, "plot").stat().st_size > 5000


def test_choose_refuses_an_evaluation_of_a_checkpoint_that_was_not_saved(tmp_path):
    folder = checkpoints(tmp_path / "checkpoints", 1)
    p = predictions(tmp_path / "p.parquet", [True])
    with pytest.raises(ValueError, match=r"no checkpoint \['epoch-2'\]"):
        execute("choose", ChooseSettings(), tmp_path / "c", {"checkpoints": folder, "epoch-2": p})


def test_the_exported_student_loads_with_plain_transformers_and_carries_its_card(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = checkpoints(tmp_path / "checkpoints", 2)
    chosen = tmp_path / "choose"
    inputs = {
        "epoch-1": predictions(tmp_path / "p1.parquet", [True, False]),
        "epoch-2": predictions(tmp_path / "p2.parquet", [True, True]),
    }
    execute("choose", ChooseSettings(), chosen, {"checkpoints": folder} | inputs)
    test = predictions(tmp_path / "test.parquet", [True, False, False, True])
    trainset = write_table(
        [
            {
                "question_id": "q",
                "question": "x",
                "answer": "1",
                "rationales": ["a", "b"],
                "answer_spans": [{"start": 0, "end": 1}] * 2,
                "teachers": ["t", "t"],
                "sample_indices": [0, 1],
            }
        ],
        tmp_path / "trainset.parquet",
        TRAINSET,
    )
    settings = ExportSettings(
        name="tiny-mcc-kd",
        method="mcc_kd",
        base_model_id="demo/student_base",
        data="Recorded rationales",
        train=TrainSettings(base_model=STUDENT_BASE_DIR, loop=TrainConfig(alpha=0.1, epochs=2)),
    )
    out = tmp_path / "export"
    inputs = {
        "model": output("choose", chosen),
        "checkpoint_scores": output("choose", chosen, "checkpoint_scores"),
        "predictions": test,
        "trainset": trainset,
    }
    summary = execute("export", settings, out, inputs)
    model_dir = output("export", out)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert model.num_parameters() > 0 and tokenizer("3 + 4").input_ids
    text = (model_dir / CARD).read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == "demo/student_base" and "mcc-kd" in front["tags"]
    assert "kept: **epoch-2**" in text and "| epoch-2 (kept) | 1.000 (2/2) |" in text
    assert "| validation | 4 | 0.500 | [" in text  # the test table with its interval
    assert "2 rationales of 1 questions" in text and "MCC-KD" in text and summary["checkpoint"] == "epoch-2"


@pytest.mark.slow
def test_a_run_with_validation_trains_on_no_validation_question_and_keeps_its_best_epoch(prefect_harness, tmp_path):
    """The distill flow with a validation split, end to end (real vLLM, training, Prefect): the folders
    written are exactly the plan's, no validation question reaches training, the kept checkpoint is the
    best on validation (ties: the earliest), it is the model the test sets evaluate, and it is exported.
    The rationales are the demo world's own for its training questions (what the demo teacher learned to
    write), imported: the split is the same on sampled rows, and sampling is tested in test_flow.py."""
    from transformers import AutoModelForCausalLM

    from flows.demo import DemoSettings, demo_config, demo_questions
    from flows.distill import distill

    store = tmp_path / "store"
    settings = DemoSettings(
        train_questions=12,
        test_questions=3,
        loop={"epochs": 2, "questions_per_batch": 4},
        seeds=[0],
    )
    questions = demo_questions.fn(store, 12, 3, 0)
    config = demo_config(settings, questions, store, tmp_path / "report")
    config = DistillConfig.model_validate(
        config.model_dump()
        | {
            "sample": None,
            "recorded": demo_rationales(questions / TRAIN_FILE, 12, 3, tmp_path / "rationales.json"),
            "recorded_as": ImportSettings(teacher_name="demo-teacher", cot_format="plain", granularity="2"),
            "validation": HoldoutSettings(fraction=0.25),
            "evaluate_teachers": False,
            "students": {"std_cot": config.students["std_cot"]},
        }
    )
    planned = plan(config)
    before = {p.parent for p in store.glob("*/*/manifest.json")}
    metrics = distill(config)
    written = {p.parent for p in store.glob("*/*/manifest.json")} - before
    assert written == {c.out for c in planned.calls}

    held = {
        q["question_id"]
        for q in read_table(output("holdout", planned.curation.holdout.out, "validation"), QUESTIONS).to_pylist()
    }
    assert len(held) == 3
    trained = set(
        read_table(output("materialize", planned.curation.materialize.out), TRAINSET).column("question_id").to_pylist()
    )
    judged = set(
        read_table(output("judge", planned.curation.judge.out, "judged"), JUDGED).column("question_id").to_pylist()
    )
    assert trained and not held & trained and not held & judged

    student = planned.students["std_cot", 0]
    scores = []
    for name, call in student.validations.items():
        rows = read_table(output("evaluate", call.out, "predictions"), PREDICTIONS).to_pylist()
        assert {r["question_id"] for r in rows} == held and {r["split"] for r in rows} == {"validation"}
        scores.append((sum(r["correct"] for r in rows), name))
    best = max(scores, key=lambda s: (s[0], -scores.index(s)))[1]
    assert metrics["checkpoints"]["std_cot"]["0"]["chosen"] == best
    assert planned.evaluations["std_cot", 0].settings.model == output("choose", student.choose.out)
    exported = output("export", planned.exports["std_cot", 0].out)
    assert AutoModelForCausalLM.from_pretrained(str(exported)).num_parameters() > 0
    assert f"kept: **{best}**" in (exported / CARD).read_text()
    report = (tmp_path / "report" / "report.md").read_text()
    assert (
        "### Checkpoint selection" in report
        and (tmp_path / "report" / "checkpoint_selection.png").stat().st_size > 5000
    )
