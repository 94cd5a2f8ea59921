"""The distill flow end to end: real vLLM, real Prefect, real training, on a tiny configuration.

Uses the committed demo teacher and student base (no download). Checks that every stage runs
and writes its folder, each (method, seed) its own train and evaluate, that the metrics carry
per-seed figures, intervals and paired comparisons, that a second run executes no stage body
(every task run is Cached and no folder is rewritten), that a cold run in a new store, sampling
on a local Ray cluster, gives the local backend's rows and identical figures, that a deleted stage
folder is recomputed rather than served stale from Prefect's cache, and that changing only student
settings re-runs only train and evaluate. The run reads one test set through ``test_fields`` and
writes exactly the folders its plan names.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from flows.demo import DemoSettings, demo_config, demo_questions
from flows.distill import distill
from flows.plan import plan
from mcckd import plots
from mcckd.cluster import RaySettings
from mcckd.report import data_url
from mcckd.stages import output
from mcckd.stages.train import plot_losses
from mcckd.store import read_manifest
from tests.demo_questions import renamed_test_set
from tests.prefect_runs import task_states
from tests.test_stage_declarations import check_declared_outputs

pytestmark = pytest.mark.slow

TINY = DemoSettings(
    train_questions=6,
    test_questions=3,
    sample={"num_samples": 3},
    select={"k": 2},
    loop={"epochs": 1, "questions_per_batch": 4},
    seeds=[0, 1],
)


def artifacts(key: str, state=None) -> list:
    """The artifacts under ``key``, of the flow run of ``state`` when given (the harness is shared by
    every test module, and other flows create the same keys)."""
    run = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]) if state is not None else None
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=run))


def report_verdicts(config) -> set[str]:
    from mcckd.report import verdict_counts

    [judge_dir] = config.store.glob("judge/*/")
    return set(verdict_counts(judge_dir))


def stage_folders(store) -> dict[str, float]:
    return {
        str(p.parent.relative_to(store)): read_manifest(p.parent)["finished_at"]
        for p in store.glob("*/*/manifest.json")
    }


def train_log(folder: Path, name: str) -> list[dict]:
    """Rows of a train folder's ``train_log`` or ``dev_log``."""
    return pq.read_table(output("train", folder, name)).to_pylist()


def redraw_report_plots(config, metrics: dict, out: Path) -> dict[str, Path]:
    """The report's three figures drawn again from metrics.json and each method's train logs."""
    logs: dict[str, dict[int, list[dict]]] = {}
    for manifest in sorted(config.store.glob("train/*/manifest.json")):
        loop = json.loads(manifest.read_text())["settings"]["loop"]
        [name] = [n for n, m in config.students.items() if m.train.loop.alpha == loop["alpha"]]
        logs.setdefault(name, {})[loop["seed"]] = train_log(manifest.parent, "train_log")
    assert {n: sorted(runs) for n, runs in logs.items()} == {n: [0, 1] for n in config.students}
    by_method = {n: [logs[n][s] for s in sorted(logs[n])] for n in config.students}  # the flow's order
    plots.plot_accuracy(metrics, out / "accuracy.png")
    colours = plots.model_colours(plots.model_names(metrics))
    plots.plot_training_curves(by_method, out / "training_curves.png", colours)
    plots.plot_teacher_gap(metrics, out / "teacher_gap.png")
    return {name: out / f"{name}.png" for name in ("accuracy", "training_curves", "teacher_gap")}


def assert_same_image(png: Path, again: Path) -> None:
    """A real, non-blank image with the same pixels as the redrawn one."""
    image, expected = imread(png), imread(again)
    assert image.shape == expected.shape and image.shape[0] >= 250 and image.shape[1] >= 400, png
    assert image.std() > 0, png
    assert np.abs(image - expected).max() < 1e-6, png


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory):
    """One full run shared by the tests below (each vLLM start costs seconds)."""
    root = tmp_path_factory.mktemp("flow")
    store = root / "store"
    questions = demo_questions.fn(store, TINY.train_questions, TINY.test_questions, TINY.data_seed)
    config = demo_config(TINY, questions, store, root / "report")
    # One test set is a user's file under its own column names, read through test_fields by
    # decontaminate and evaluate (the same rows: its figures do not change).
    mixed, fields = renamed_test_set(config.test_sets["ood_mixed"], root / "ood_mixed.jsonl")
    config = config.model_copy(
        update={"test_sets": config.test_sets | {"ood_mixed": mixed}, "test_fields": {"ood_mixed": fields}}
    )
    console = io.StringIO()  # what the flow's process writes; stage processes write to their log files
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        state = distill(config, return_state=True)
    return root, questions, config, state, stage_folders(store), console.getvalue()


def test_distill_flow_runs_every_stage_then_caches(first_run, tmp_path_factory):
    root, _, config, first, folders, console = first_run
    assert first.is_completed(), first.message
    metrics = first.result()
    states = task_states(first)
    assert {k: len(v) for k, v in states.items()} == {
        "sample": 1,
        "judge": 1,
        "select": 1,
        "decontaminate": 1,
        "materialize": 1,
        "train": 4,  # 2 methods x 2 seeds
        "evaluate": 6,  # teacher, untrained, 2 methods x 2 seeds
    }
    assert all(s == "Completed" for v in states.values() for s in v), states
    models = {"teacher", "untrained", "std_cot", "mcc_kd"}
    assert set(metrics) == models | {"per_seed", "ci95", "paired", "unanswered", "seeds", "counts", "warnings"}
    # Six questions are too few to mean anything: said before training, on the console and in the report.
    [small] = metrics["warnings"]
    assert "fewer than min_rationales=50" in small and f"warning: {small}" in console
    assert console.index(f"warning: {small}") < console.index("train std_cot seed 0")
    assert "## Warnings" in (root / "report" / "report.md").read_text()
    splits = {"id", "ood_steps", "ood_templates", "ood_mixed"}
    assert all(set(metrics[m]) == splits == set(metrics["ci95"][m]) for m in models)
    assert metrics["seeds"] == {"std_cot": [0, 1], "mcc_kd": [0, 1]}
    for method in ("std_cot", "mcc_kd"):
        for split, accs in metrics["per_seed"][method].items():
            assert len(accs) == 2 and metrics[method][split] == pytest.approx(sum(accs) / 2)
    for m in models:
        for split, (low, high) in metrics["ci95"][m].items():
            assert 0.0 <= low <= metrics[m][split] <= high <= 1.0
    assert list(metrics["paired"]) == ["mcc_kd - std_cot", "std_cot - untrained", "mcc_kd - untrained"]
    for key, paired in metrics["paired"].items():
        a, b = key.split(" - ")
        assert set(paired) == splits
        for split, r in paired.items():
            assert r["difference"] == pytest.approx(metrics[a][split] - metrics[b][split])
            assert 0.0 <= r["p_value"] <= 1.0 and r["ci95"][0] <= r["difference"] <= r["ci95"][1]
    assert metrics["counts"]["samples"] == TINY.train_questions * TINY.sample.num_samples * len(TINY.cot_styles)
    assert json.loads((root / "report" / "metrics.json").read_text()) == metrics
    text = (root / "report" / "report.md").read_text()
    assert "| mcc_kd | 2 |" in text and "mcc_kd - std_cot" in text and "torch threads" in text
    # Each figure plots this run's numbers: drawn again from metrics.json and the train logs, it has the
    # same pixels (that the plot functions draw the data they are given is tested in test_stats.py).
    redrawn = redraw_report_plots(config, metrics, tmp_path_factory.mktemp("redrawn"))
    for plot, again in redrawn.items():
        png = root / "report" / f"{plot}.png"
        assert_same_image(png, again)
        [image] = artifacts(f"plot-{plot.replace('_', '-')}", first)
        assert image.type == "image" and image.data == data_url(png)
    # questions, sample, judge, select, decontaminate, materialize, 4 x train, 6 x evaluate
    assert len(folders) == 16
    examples = json.loads(artifacts("judge-examples", first)[0].data)
    verdicts = [e["verdict"] for e in examples]
    assert set(verdicts) == report_verdicts(config) and max(verdicts.count(v) for v in verdicts) <= 2
    [loss] = artifacts("train-mcc-kd-seed1-loss", first)
    loss_png = Path(loss.description)
    assert loss_png == output("train", loss_png.parent, "loss_plot")
    assert loss.type == "image" and loss.data == data_url(loss_png)
    run = read_manifest(loss_png.parent)["settings"]["loop"]
    assert run["alpha"] > 0 and run["seed"] == 1
    again = tmp_path_factory.mktemp("loss") / loss_png.name
    plot_losses(*(train_log(loss_png.parent, name) for name in ("train_log", "dev_log")), again)
    assert_same_image(loss_png, again)
    [summary] = artifacts("sample-summary", first)
    assert str(config.store / "sample") in summary.data  # the stage's folder
    [throughput] = json.loads(artifacts("teacher-throughput", first)[0].data)
    assert throughput["teacher"] == "demo-teacher" and throughput["generated_tokens_per_s"] > 0

    # The console: a line per stage saying what it made and where, no library warnings (those are in
    # each stage's log file beside its folder).
    lines = console.splitlines()
    curation = ["sample", "judge", "select", "decontaminate", "materialize"]
    for label in [*curation, "evaluate teacher", "evaluate untrained"]:
        assert any(line.startswith(f"{label}: ") for line in lines), (label, console[-2000:])
    for method in ("std_cot", "mcc_kd"):
        for seed in (0, 1):
            assert any(line.startswith(f"train {method} seed {seed}: ") for line in lines)
            assert any(line.startswith(f"evaluate {method}-seed{seed}: ") for line in lines)
    assert not [line for line in lines if "warning" in line.lower() and small not in line], console[-3000:]
    logs = sorted(config.store.glob("*/*.log"))
    assert {p.parent.name for p in logs} == {"sample", "train", "evaluate"} and len(logs) == 11
    assert any("WARNING" in p.read_text() for p in logs if p.parent.name == "evaluate")  # vLLM's, kept

    second = distill(config, return_state=True)
    assert all(s == "Cached" for v in task_states(second).values() for s in v), task_states(second)
    assert stage_folders(config.store) == folders  # nothing rewritten
    assert second.result() == metrics


def test_a_cold_run_on_a_ray_cluster_gives_the_same_rows_and_figures(first_run, tmp_path):
    """MCC-KD seed 0 alone, from nothing in a new store, with ``sample.backend = "ray"``: the stage
    starts a local cluster (no RAY_ADDRESS here) and two replicas sample the demo teacher. Their rows
    equal the local backend's row for row, and judging, training (cross-entropy and the consistency
    term) and scoring repeat bit for bit."""
    _, _, config, first, _, _ = first_run
    mcc_kd = config.students["mcc_kd"].model_copy(update={"seeds": [0]})
    on_ray = config.sample.model_copy(update={"backend": "ray", "ray": RaySettings(replicas=2)})
    cold = config.model_copy(
        update={
            "store": tmp_path / "store",
            "report_dir": tmp_path / "report",
            "sample": on_ray,
            "students": {"mcc_kd": mcc_kd},
            "evaluate_teachers": False,  # the teacher's sampling is repeated; its scoring is not needed
        }
    )
    state = distill(cold, return_state=True)
    assert all(s == "Completed" for v in task_states(state).values() for s in v)
    [local], [ray] = config.store.glob("sample/*/"), cold.store.glob("sample/*/")
    assert ray.name == local.name  # where it ran is not part of what it made
    rows = pq.read_table(output("sample", ray, "samples")).to_pylist()
    assert rows == pq.read_table(output("sample", local, "samples")).to_pylist()  # text, seeds, token counts
    summary = read_manifest(ray)["summary"]
    assert summary["samples"] == TINY.train_questions * 3 and summary["throughput"][0]["generated_tokens_per_s"] > 0
    replicas = summary["replicas"]  # as many as there are shards, at most 2
    assert len(replicas) == min(2, summary["shards"]) and sum(r["shards_done"] for r in replicas) == summary["shards"]
    again, warm = state.result(), first.result()
    assert again["counts"] == warm["counts"]
    assert "teacher" not in again
    assert again["untrained"] == warm["untrained"] and again["ci95"]["untrained"] == warm["ci95"]["untrained"]
    assert {s: a[0] for s, a in again["per_seed"]["mcc_kd"].items()} == {
        s: a[0] for s, a in warm["per_seed"]["mcc_kd"].items()
    }


def test_changed_student_settings_rerun_only_train_and_evaluate(first_run):
    root, questions, config, _, folders, _ = first_run
    store = config.store
    # A stage folder deleted behind Prefect's back is recomputed, not served from its cache record.
    [judged] = [d for d in store.glob("judge/*") if d.is_dir()]  # beside it lies its lock file
    for f in judged.iterdir():
        f.unlink()
    judged.rmdir()

    loop = TINY.loop.model_copy(update={"learning_rate": TINY.loop.learning_rate / 2})
    changed = TINY.model_copy(update={"loop": loop, "seeds": [0]})
    reads = {"test_sets": config.test_sets, "test_fields": config.test_fields}  # the first run's
    state = distill(demo_config(changed, questions, store, root / "r2").model_copy(update=reads), return_state=True)
    states = task_states(state)
    assert states["sample"] == states["select"] == states["decontaminate"] == states["materialize"] == ["Cached"]
    assert states["judge"] == ["Completed"]  # its folder was gone
    assert states["train"] == ["Completed", "Completed"]
    assert sorted(states["evaluate"]) == ["Cached", "Cached", "Completed", "Completed"]  # teacher, base: cached
    new = set(stage_folders(store)) - set(folders)
    assert {f.split("/")[0] for f in new} == {"train", "evaluate"} and len(new) == 4


def test_stage_progress_file_becomes_a_progress_artifact(prefect_harness, tmp_path):
    from prefect import flow

    from mcckd.store import write_progress
    from tasks.stages import read_progress, report_progress

    progress = tmp_path / "progress.json"
    assert read_progress(progress) is None  # not written yet

    @flow
    def watch() -> None:
        write_progress(progress, 1, 4, unit="shards")
        artifact = report_progress("watched", read_progress(progress), None)
        write_progress(progress, 3, 4, unit="shards")
        report_progress("watched", read_progress(progress), artifact)

    watch()
    [artifact] = artifacts("watched-progress")
    assert artifact.type == "progress" and float(artifact.data) == 75.0
    assert artifact.description == "watched: 4 shards in all"  # created at 1 of 4, read at 3


def test_the_run_wrote_its_plan_and_each_stage_its_declared_outputs(first_run):
    """Every folder the run wrote is a call of its plan (and every call has its folder), and each holds
    exactly the files its stage declares, with their schemas."""
    _, _, config, _, folders, _ = first_run
    calls = plan(config).calls
    assert {f"{call.stage}/{call.fingerprint}" for call in calls} == {
        n for n in folders if not n.startswith("questions/")
    }
    for call in calls:
        check_declared_outputs(call.out)
        if call.stage in ("decontaminate", "evaluate"):  # test_fields reached the stages that read test sets
            assert call.settings.fields == config.test_fields, call.label
    assert all(call.stored for call in plan(config).calls)  # planned again: nothing left to run
