"""The CoT-factor sweep: its plan and budget, the recorded SVAMP cells of arXiv 2502.18001 through
import, judge, select and materialize, and one store that three sweep runs build on: a recorded cell
trained and evaluated, writing exactly the folders its plan names (with ``test_fields`` set); a
re-run with a sampled cell added, which trains only that cell and reports the mixed sweep (sampled
and recorded cells); and a sweep over axes, which writes exactly the calls of its plan not already
stored. Real vLLM, Prefect, training and Parquet throughout; the recorded SVAMP cells are English,
which the demo student's tokenizer was not made for, so training on them is tested at this small
scale only.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread

from flows.demo import DEMO_TEACHER, DemoSweep, demo_sweep_config
from flows.real import COT_FACTOR_CELLS, svamp_labels
from flows.sweep import RecordedCell, SweepConfig, cot_sweep, plan_sweep
from mcckd.demo_world.assets import TOKENIZER_DIR
from mcckd.plots import plot_sweep_heatmaps
from mcckd.stages import output
from mcckd.store import is_complete
from mcckd.sweep import Cell
from tests.demo_questions import renamed_test_set
from tests.prefect_runs import task_states
from tests.shared_data import SHARED_DATA, needs_shared

TINY = DemoSweep(
    train_questions=4,
    test_questions=3,
    cot_formats=["plain"],
    granularities=["1"],
    sample={"num_samples": 2},  # K = 2: a question's two rationales, when both are right
    loop={"epochs": 1},
    seeds=[0],
)


def svamp_cell(tmp_path: Path, name: str, rows: int | None = None) -> RecordedCell:
    source = SHARED_DATA / "cot-factors" / name
    if rows is not None:  # the first rows only: a small-scale training cell
        source = tmp_path / f"head-{name}"
        source.write_text(json.dumps(json.loads((SHARED_DATA / "cot-factors" / name).read_text())[:rows]))
    fmt, level = COT_FACTOR_CELLS[name]
    labels = svamp_labels.fn(SHARED_DATA, tmp_path / "store")  # the cot-factors files carry no gold answers
    return RecordedCell(file=source, teacher="chatgpt", cot_format=fmt, granularity=level, labels=labels)


def written(store: Path) -> set[str]:
    """``stage/fingerprint`` of every complete stage folder in the store."""
    return {f"{p.parent.parent.name}/{p.parent.name}" for p in store.glob("*/*/manifest.json")}


def test_plan_states_every_stage_and_the_budget_leaves_out_whole_runs(tmp_path):
    settings = TINY.model_copy(update={"cot_formats": ["plain", "subq"], "seeds": [0, 1]})
    config = demo_sweep_config(settings, tmp_path / "store", tmp_path / "report")
    plan = plan_sweep(config)
    stages = [row["stage"] for row in plan.rows()]
    # 2 cells x (sample, judge, select, decontaminate, materialize); teacher + untrained; 2 cells x 2 methods x 2 seeds
    assert stages.count("sample") == stages.count("decontaminate") == stages.count("materialize") == 2
    assert stages.count("train") == 8 and stages.count("evaluate") == 2 + 8
    assert {row["state"] for row in plan.rows()} == {"to run"} and len(plan.students) == 8 and not plan.left_out
    limited = config.model_copy(update={"budget": 2 + 5})  # the 2 reference evaluations, then 2 whole runs
    plan = plan_sweep(limited)
    assert len(plan.students) == len(plan.evaluations) == 2 and len(plan.left_out) == 6
    assert sum(row["state"] == "left out (budget)" for row in plan.rows()) == 12  # train and evaluate of each
    assert not {c.fingerprint for c in plan.calls} & {c.fingerprint for pair in plan.left_out.values() for c in pair}


def test_axes_vary_any_setting_and_share_what_they_do_not_change(tmp_path):
    """select.k changes curation from select on; train.* changes only the trainings; each combination
    is a variant of every cell, named in its runs, and a curation shared by variants is planned once."""
    config = demo_sweep_config(TINY, tmp_path / "store", tmp_path / "report")
    config = SweepConfig.model_validate(
        config.model_dump() | {"axes": {"select.k": [1, 2], "train.loop.learning_rate": [1e-3, 2e-3]}}
    )
    plan = plan_sweep(config)
    stages = [c.stage for c in plan.calls]
    assert stages.count("sample") == stages.count("judge") == 1  # one cell: sampled and judged once
    assert stages.count("select") == stages.count("materialize") == 2  # one curation per k
    assert stages.count("train") == 2 * 2 * 2  # k x learning rate x (std_cot, mcc_kd), one seed
    names = {cell.name for cell, _, _ in plan.students}
    assert names == {f"demo-teacher/plain-1 [k={k} learning_rate={lr}]" for k in (1, 2) for lr in (0.001, 0.002)}
    for (cell, method, _), student in plan.students.items():
        k, lr = (float(part.split("=")[1]) for part in cell.variant.split())
        assert student.train.settings.loop.learning_rate == lr and (method == "std_cot") == (
            student.train.settings.loop.alpha == 0
        )
        curation = plan.curations[replace(cell, variant=f"k={int(k)}")][1]
        assert student.train.inputs["trainset"] == curation.materialize.ref and curation.select.settings.k == k


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"select.k": [2, 0]}, r"axes.select.k = 0: k: Input should be greater than or equal to 1"),
        ({"train.loop.alpha": [-1]}, r"axes.train.loop.alpha = -1: loop.alpha: Input should be greater than"),
        ({"train.loop.epoch": [3]}, r"axes.train.loop.epoch: TrainSettings has no setting 'loop.epoch'"),
        ({"seed": [1]}, r"axes.seed: an axis is a curation setting"),
        ({"select.k": []}, r"axes.select.k: give at least one value"),
    ],
)
def test_a_bad_axis_is_one_line_naming_it(tmp_path, axes, message):
    config = demo_sweep_config(TINY, tmp_path / "store", tmp_path / "report")
    with pytest.raises(ValueError, match=message):
        SweepConfig.model_validate(config.model_dump() | {"axes": axes})


def test_a_sweep_needs_cells_and_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="a sweep needs cells"):
        SweepConfig(test_sets={}, tokenizer=TOKENIZER_DIR)
    with pytest.raises(ValueError, match="sampled cells need teachers, cot_formats"):
        SweepConfig(test_sets={}, tokenizer=TOKENIZER_DIR, cot_formats=["plain"], granularities=["1"])
    config = demo_sweep_config(TINY, tmp_path / "store", tmp_path / "report")
    with pytest.raises(ValueError, match="rank_on 'nope' is not a test set"):
        SweepConfig.model_validate(config.model_dump() | {"rank_on": "nope"})


@pytest.mark.slow  # the Prefect harness and a sweep flow
@needs_shared
def test_recorded_svamp_cells_give_per_cell_data_statistics(prefect_harness, tmp_path):
    config = SweepConfig(
        store=tmp_path / "store",
        report_dir=tmp_path / "report",
        test_sets={},
        recorded=[svamp_cell(tmp_path, name) for name in COT_FACTOR_CELLS],
        tokenizer=TOKENIZER_DIR,
    )
    summary = cot_sweep(config)
    data = {row["cell"]: row for row in summary["data"]}
    assert list(data) == [f"chatgpt/{fmt}-{level}" for fmt, level in COT_FACTOR_CELLS.values()]
    for row in data.values():
        assert row["source"] == "recorded" and row["teacher_tokens_generated"] is None
        assert row["questions"] in (699, 700) and row["rationales"] == row["questions"]
        # 106 of the questions are in neither SVAMP file: no gold answer, so not graded and not kept
        assert row["ungraded"] == 106 and 0.85 < row["teacher_accuracy"] <= 1
        assert row["kept_rationales"] == row["trainset_questions"] <= row["questions"] - 106
        assert row["diversity_mean_max_similarity"] is None  # one rationale per question: nothing to compare
    tokens = [data[f"chatgpt/plain-{level}"]["mean_tokens"] for level in ("1", "3", "5")]
    assert tokens == sorted(tokens) and tokens[2] > 1.5 * tokens[0]  # granularity is length
    judge_dir = next(d for d in (tmp_path / "store" / "judge").iterdir() if is_complete(d))
    judged = pq.read_table(output("judge", judge_dir, "judged")).to_pylist()
    assert {r["granularity"] for r in judged} <= {"1", "3", "5"} and {r["cot_format"] for r in judged} <= {
        "plain",
        "subq",
        "rar",
        "symbolic",
    }
    assert summary["results"] == [] and summary["recommendation"] == []
    text = (tmp_path / "report" / "sweep.md").read_text()
    assert "chatgpt/symbolic-3" in text and "data statistics only" in text


@pytest.fixture(scope="module")
def recorded_sweep(prefect_harness, tmp_path_factory):
    """One sweep flow run the two tests below build on (each adds to its store, as a user's next run
    would): a recorded SVAMP cell (its first 8 rows), trained with Std-CoT and MCC-KD, the test set read
    through ``test_fields`` (a user's file under its own column names) and no teacher evaluated. Returns
    the config, its plan, the run's state and the stage folders the run wrote."""
    tmp = tmp_path_factory.mktemp("sweep")
    base = demo_sweep_config(TINY, tmp / "store", tmp / "report")
    renamed, fields = renamed_test_set(base.test_sets["id"], tmp / "id.jsonl")
    config = SweepConfig.model_validate(
        base.model_dump()
        | {
            "teachers": [],
            "cot_formats": [],
            "granularities": [],
            "test_sets": {"id": renamed},
            "test_fields": {"id": fields},
            "recorded": [svamp_cell(tmp, "SVAMP_ChatGPT_level1_ranked.json", rows=8).model_dump()],
            "evaluate_teachers": False,
        }
    )
    labels = written(config.store)  # svamp_cell's stored labels
    planned = plan_sweep(config)
    state = cot_sweep(config, return_state=True)
    assert state.is_completed(), state.message
    return config, planned, state, written(config.store) - labels


@pytest.mark.slow
@needs_shared
def test_a_sweep_over_axes_with_test_fields_writes_exactly_its_plan(recorded_sweep, tmp_path):
    """The generalised sweep's plan is its run: a recorded cell, two learning rates of one method, K
    and the test set read through test_fields. On a store that holds another sweep's run, it writes
    exactly its planned calls that were not stored (one training and its variants' evaluations: the
    curation, the training at the method's own learning rate and the untrained reference are found by
    fingerprint), and a second plan finds every call stored."""
    base, _, _, _ = recorded_sweep
    fields = base.test_fields["id"]
    config = SweepConfig.model_validate(
        base.model_dump()
        | {
            "report_dir": tmp_path / "report",
            "methods": {"std_cot": base.methods["std_cot"].model_dump()},
            "axes": {"select.k": [2], "train.loop.learning_rate": [2e-3, 3e-3]},
        }
    )
    before = written(config.store)
    planned = plan_sweep(config)
    assert all(c.settings.fields == {"id": fields} for c in planned.calls if c.stage in ("decontaminate", "evaluate"))
    to_run = {f"{c.stage}/{c.fingerprint}": c for c in planned.calls if not c.stored}
    trained = [c.settings.loop.learning_rate for c in to_run.values() if c.stage == "train"]
    assert trained == [3e-3] and sorted(c.stage for c in to_run.values()) == ["evaluate", "evaluate", "train"]
    state = cot_sweep(config, return_state=True)
    assert state.is_completed(), state.message
    assert written(config.store) - before == set(to_run)
    assert {row["state"] for row in plan_sweep(config).rows()} == {"stored (cached)"}
    summary = state.result()
    assert [r["cell"] for r in summary["results"]] == [
        "chatgpt/plain-1 [k=2 learning_rate=0.002]",
        "chatgpt/plain-1 [k=2 learning_rate=0.003]",
    ]
    assert summary["best"][0]["runner_up"] and "paired" in summary["best"][0]


@pytest.mark.slow
@needs_shared
def test_mixed_sweep_trains_reports_and_adds_a_cell_training_only_that_cell(recorded_sweep, tmp_path):
    """A recorded cell's sweep (the fixture's run: the folders it wrote are its plan's), then the same
    sweep with a sampled cell added: only that cell's sample, curation, trainings and evaluations run,
    and the mixed sweep (sampled and recorded cells) reports on both."""
    config, planned, first, wrote = recorded_sweep
    # The test set is read through test_fields: the plan passes them to decontaminate and evaluate as
    # the run does, so it names exactly the folders written.
    assert wrote == {f"{c.stage}/{c.fingerprint}" for c in planned.calls}
    assert {row["state"] for row in plan_sweep(config).rows()} == {"stored (cached)"}
    states = task_states(first)
    assert {k: len(v) for k, v in states.items()} == {
        "import": 1,
        "judge": 1,
        "select": 1,
        "decontaminate": 1,
        "materialize": 1,
        "train": 2,  # 1 cell x 2 methods x 1 seed
        "evaluate": 3,  # untrained, 2 students (evaluate_teachers is off)
    }
    assert all(s == "Completed" for v in states.values() for s in v), states

    # One more cell, beyond the (empty) grid: the demo teacher's plain-1, sampled.
    more = SweepConfig.model_validate(
        config.model_dump() | {"teachers": [DEMO_TEACHER.model_dump()], "extra_cells": [("plain", "1")]}
    )
    grid = more.model_copy(update={"cot_formats": ["plain"], "granularities": ["1"], "extra_cells": [("subq", "1")]})
    assert [c.name for c in plan_sweep(grid).sources] == [  # extra cells come after the grid's
        "demo-teacher/plain-1",
        "demo-teacher/subq-1",
        "chatgpt/plain-1",
    ]
    before = written(config.store)
    to_run = {f"{c.stage}/{c.fingerprint}" for c in plan_sweep(more).calls if not c.stored}
    second = cot_sweep(more, return_state=True)
    assert second.is_completed(), second.message
    assert written(config.store) - before == to_run
    assert {row["state"] for row in plan_sweep(more).rows()} == {"stored (cached)"}
    states = {k: sorted(v) for k, v in task_states(second).items()}
    assert states == {
        "sample": ["Completed"],
        "import": ["Cached"],
        **{stage: ["Cached", "Completed"] for stage in ("judge", "select", "decontaminate", "materialize")},
        "train": ["Cached"] * 2 + ["Completed"] * 2,
        "evaluate": ["Cached"] * 3 + ["Completed"] * 2,
    }
    summary = second.result()
    assert [(r["cell"], r["method"]) for r in summary["results"]] == [
        ("demo-teacher/plain-1", "std_cot"),
        ("demo-teacher/plain-1", "mcc_kd"),
        ("chatgpt/plain-1", "std_cot"),
        ("chatgpt/plain-1", "mcc_kd"),
    ]
    assert [(d["cell"], d["source"]) for d in summary["data"]] == [
        ("demo-teacher/plain-1", "sampled"),
        ("chatgpt/plain-1", "recorded"),
    ]
    for r in summary["results"]:
        a = r["accuracy"]["id"]
        assert a["ci95"][0] <= a["mean"] <= a["ci95"][1] and r["train_seconds"] > 0
    assert {(b["method"], b["test_set"]) for b in summary["best"]} == {("std_cot", "id"), ("mcc_kd", "id")}
    assert all("paired" in b and 0 <= b["paired"]["p_value"] <= 1 for b in summary["best"])
    assert len(summary["recommendation"]) == 2 and set(summary["references"]) == {"untrained"}
    # The heatmap shows each (cell, method)'s accuracy in its panel: drawn again from the summary, each
    # panel's one cell holds that mean, and the report's PNG has the same pixels.
    report = more.report_dir
    cells = [Cell(d["teacher"], d["cot_format"], d["granularity"]) for d in summary["data"]]
    again = tmp_path / "heatmap_again.png"
    fig = plot_sweep_heatmaps(summary["results"], cells, "id", again, summary["references"]["untrained"]["id"])
    panels = {ax.get_title(): ax for ax in fig.axes if ax.images}
    assert len(panels) == len(summary["results"])
    for r in summary["results"]:
        grid = np.ma.filled(panels[f"{r['cell'].split('/')[0]} · {r['method']}"].images[0].get_array(), np.nan)
        assert grid.tolist() == [[pytest.approx(r["accuracy"]["id"]["mean"])]]  # one format, one granularity
    heatmap, expected = imread(report / "heatmap_id.png"), imread(again)
    assert heatmap.shape == expected.shape and heatmap.std() > 0 and np.abs(heatmap - expected).max() < 1e-6
    untrained = f"untrained: id {summary['references']['untrained']['id']:.3f}"
    assert untrained in (report / "sweep.md").read_text()  # what the cells are read against
    assert json.loads((report / "sweep.json").read_text())["plan"]


@pytest.mark.slow  # the Prefect harness and a sweep flow
def test_cells_without_usable_rationales_are_reported_not_trained(prefect_harness, tmp_path):
    """Degenerate cells: a file with no rows, and one whose every rationale is rejected (no gold answer)."""
    empty, unlabelled = tmp_path / "empty.json", tmp_path / "unlabelled.json"
    empty.write_text("[]")
    unlabelled.write_text(json.dumps([{"instruction": "Q?", "output": "The answer is 1"}] * 2))
    base = demo_sweep_config(TINY, tmp_path / "store", tmp_path / "report")
    config = SweepConfig(
        store=tmp_path / "store",
        report_dir=tmp_path / "report",
        test_sets={"id": base.test_sets["id"]},
        recorded=[
            RecordedCell(file=empty, teacher="t", cot_format="plain", granularity="1"),
            RecordedCell(file=unlabelled, teacher="t", cot_format="plain", granularity="2"),
        ],
        methods={"std_cot": base.methods["std_cot"]},
    )
    state = cot_sweep(config, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert [r["questions"] for r in summary["data"]] == [0, 2]
    assert [r["kept_rationales"] for r in summary["data"]] == [0, 0]
    assert summary["data"][1]["ungraded"] == 2 and summary["data"][1]["teacher_accuracy"] is None
    assert summary["left_out"] == [
        "t/plain-1: no training data (every rationale was rejected; see its ledger)",
        "t/plain-2: no training data (every rationale was rejected; see its ledger)",
    ]
    assert summary["results"] == [] and "train" not in task_states(state) and "evaluate" not in task_states(state)
