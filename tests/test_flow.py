"""The distill flow end to end: real vLLM, real Prefect, real training, on a tiny configuration.

Uses the committed demo teacher and student base (no download). Checks that every stage runs
and writes its folder, that a second run executes no stage body (every task run is Cached and no
folder is rewritten), that a deleted stage folder is recomputed rather than served stale from
Prefect's cache, and that changing only student settings re-runs only train and evaluate.
"""

from __future__ import annotations

import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from flows.demo import DemoSettings, demo_config, demo_questions
from flows.distill import distill
from mcckd.store import read_manifest

pytestmark = pytest.mark.slow

TINY = DemoSettings(train_questions=6, test_questions=3, num_samples=3, k=2, epochs=1, questions_per_batch=4)


def task_states(flow_state) -> dict[str, list[str]]:
    """Task name -> state names of one flow run (its subflow-free task runs)."""
    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.split("-")[0], []).append(run.state.name)
    return states


def artifacts(key: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def stage_folders(store) -> dict[str, float]:
    return {
        str(p.parent.relative_to(store)): read_manifest(p.parent)["finished_at"]
        for p in store.glob("*/*/manifest.json")
    }


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory):
    """One full run shared by the tests below (each vLLM start costs seconds)."""
    root = tmp_path_factory.mktemp("flow")
    store = root / "store"
    questions = demo_questions.fn(store, TINY.train_questions, TINY.test_questions, TINY.seed)
    config = demo_config(TINY, questions, store, root / "report")
    state = distill(config, return_state=True)
    return root, questions, config, state, stage_folders(store)


def test_distill_flow_runs_every_stage_then_caches(first_run):
    root, _, config, first, folders = first_run
    assert first.is_completed(), first.message
    metrics = first.result()
    states = task_states(first)
    assert {k: len(v) for k, v in states.items()} == {
        "sample": 1,
        "judge": 1,
        "select": 1,
        "materialize": 1,
        "train": 2,
        "evaluate": 4,
    }
    assert all(s == "Completed" for v in states.values() for s in v), states
    assert set(metrics) == {"teacher", "untrained", "std_cot", "mcc_kd", "counts"}
    assert set(metrics["teacher"]) == {"id", "ood_steps", "ood_templates"}
    assert all(0.0 <= acc <= 1.0 for m in ("teacher", "mcc_kd") for acc in metrics[m].values())
    assert metrics["counts"]["samples"] == TINY.train_questions * TINY.num_samples
    assert json.loads((root / "report" / "metrics.json").read_text()) == metrics
    assert "| mcc_kd |" in (root / "report" / "report.md").read_text()
    # questions, sample, judge, select, materialize, 2 x train, 4 x evaluate
    assert len(folders) == 11
    [throughput] = json.loads(artifacts("teacher-throughput")[0].data)
    assert throughput["teacher"] == "demo-teacher" and throughput["generated_tokens_per_s"] > 0

    second = distill(config, return_state=True)
    assert all(s == "Cached" for v in task_states(second).values() for s in v), task_states(second)
    assert stage_folders(config.store) == folders  # nothing rewritten
    assert second.result() == metrics


def test_changed_student_settings_rerun_only_train_and_evaluate(first_run):
    root, questions, config, _, folders = first_run
    store = config.store
    # A stage folder deleted behind Prefect's back is recomputed, not served from its cache record.
    judged = next(store.glob("judge/*"))
    for f in judged.iterdir():
        f.unlink()
    judged.rmdir()

    changed = TINY.model_copy(update={"learning_rate": TINY.learning_rate / 2})
    state = distill(demo_config(changed, questions, store, root / "r2"), return_state=True)
    states = task_states(state)
    assert states["sample"] == ["Cached"] and states["select"] == ["Cached"] and states["materialize"] == ["Cached"]
    assert states["judge"] == ["Completed"]  # its folder was gone
    assert states["train"] == ["Completed", "Completed"]
    assert sorted(states["evaluate"]) == ["Cached", "Cached", "Completed", "Completed"]  # teacher, base: cached
    new = set(stage_folders(store)) - set(folders)
    assert {f.split("/")[0] for f in new} == {"train", "evaluate"} and len(new) == 4


def test_stage_progress_file_becomes_a_progress_artifact(prefect_harness, tmp_path):
    from prefect import flow

    from mcckd.store import write_progress
    from tasks.stages import report_progress

    progress = tmp_path / "progress.json"

    @flow
    def watch() -> None:
        write_progress(progress, 1, 4, unit="shards")
        artifact = report_progress("watched", progress, None)
        write_progress(progress, 3, 4, unit="shards")
        report_progress("watched", progress, artifact)

    watch()
    [artifact] = artifacts("watched-progress")
    assert artifact.type == "progress" and float(artifact.data) == 75.0
    assert artifact.description == "watched: 1/4 shards"
