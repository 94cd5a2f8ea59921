"""One plan for every flow: ``flows.plan.plan`` (distill) and ``flows.sweep.plan_sweep`` build every
stage call with its fingerprint before anything runs, and the flows execute exactly those calls.

- Every config the project ships (examples/, the demo and its sweep, the real flows, each with and
  without ``test_fields``) plans into a closed graph: each call's inputs are user files or earlier
  calls' outputs, and each fingerprint is the one its settings and inputs give.
- For the stages whose fingerprint does not depend on where the checkout and store are, the plan
  gives the fingerprints the flows ran with before the plan existed (``tests/data/plan_fingerprints.json``,
  recorded from commit 1a0a579's run path). The sweep's old planner disagreed with its own run on 36
  of them when ``test_fields`` was set: the planner passed decontaminate's settings without them.
- Real runs write exactly the folders of their plans, with ``test_fields`` set: the distill flow in
  ``tests/test_flow.py`` and a sweep in ``tests/test_sweep.py`` (slow: they train and start vLLM).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from flows.config import DistillConfig, RunConfig
from flows.demo import DemoSettings, DemoSweep, demo_config, demo_questions, demo_sweep_config
from flows.plan import StageCall, plan
from flows.real import (
    RealSettings,
    SelfDistillSettings,
    authors_split_config,
    real_config,
    self_distill_config,
    svamp_labels,
    sweep_config,
)
from flows.sweep import plan_sweep
from mcckd.paths import PROJECT_ROOT
from mcckd.stages import STAGES, stage_fingerprint
from mcckd.stages.holdout import HoldoutSettings
from tests.shared_data import needs_shared

GOLDEN = json.loads((PROJECT_ROOT / "tests" / "data" / "plan_fingerprints.json").read_text())["configs"]
STABLE = {"import", "judge", "select", "decontaminate", "materialize", "train"}  # fingerprints free of paths


def renamed_fields(config: RunConfig) -> RunConfig:
    """The same config with ``test_fields`` set for GSM8K (an identity mapping: the same file, read
    through it), as the recorded fingerprints were computed."""
    return config.model_copy(update={"test_fields": {"gsm8k": {"question": "question", "answer": "answer"}}})


def shipped_configs(store: Path, reports: Path) -> dict[str, RunConfig]:
    """Every config the project ships, built as its command builds it."""
    questions = demo_questions.fn(store, 2400, 400, 0)
    real = RealSettings()
    configs = {
        "demo": demo_config(DemoSettings(), questions, store, reports),
        "demo_sweep": demo_sweep_config(DemoSweep(), store, reports),
        "real": real_config(real, store, reports),
        "real_self": self_distill_config(real, SelfDistillSettings(), store, reports),
        "real_authors_split": authors_split_config(real, store, reports),
        "real_validation": real_config(real.model_copy(update={"validation": HoldoutSettings()}), store, reports),
    }
    with _tasks_as_functions():
        configs["real_sweep"] = sweep_config(real, store, reports)
    for path in sorted((PROJECT_ROOT / "examples").glob("*.json")):
        config = DistillConfig.model_validate_json(path.read_text())
        if any(t.backend == "http" for t in config.teachers):
            continue  # a served teacher's identity is what its server reports: planned where it runs
        configs[f"examples/{path.name}"] = config.model_copy(update={"store": store, "report_dir": reports})
    configs["real_test_fields"] = renamed_fields(configs["real"])
    configs["real_sweep_test_fields"] = renamed_fields(configs["real_sweep"])
    return configs


@contextlib.contextmanager
def _tasks_as_functions():
    """``sweep_config`` writes SVAMP's labels through a Prefect task; outside a flow, call its function."""
    import flows.real

    task = flows.real.svamp_labels
    flows.real.svamp_labels = svamp_labels.fn
    try:
        yield
    finally:
        flows.real.svamp_labels = task


def calls_of(config: RunConfig) -> list[StageCall]:
    return plan(config).calls if isinstance(config, DistillConfig) else plan_sweep(config).calls


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> dict[str, list[StageCall]]:
    root = tmp_path_factory.mktemp("plans")
    return {name: calls_of(config) for name, config in shipped_configs(root / "store", root / "reports").items()}


@needs_shared
def test_every_shipped_config_plans_a_closed_graph_of_true_fingerprints(planned):
    assert {"demo", "demo_sweep", "real", "real_sweep", "real_self", "real_test_fields", "real_authors_split"} <= set(
        planned
    )
    assert any(name.startswith("examples/") for name in planned)
    for name, calls in planned.items():
        produced: set[Path] = set()
        for call in calls:
            spec = STAGES[call.stage]
            for input_name, ref in call.inputs.items():
                if ref.path in produced:  # another stage's output (the validation questions among test sets)
                    continue
                if input_name in spec.user_files or (spec.test_sets and input_name not in spec.inputs):
                    assert ref.path.exists(), (name, call.label, input_name, ref.path)
                else:  # another stage's output: planned before this call
                    assert ref.path in produced, (name, call.label, input_name)
            inputs = {k: r.fingerprint for k, r in call.inputs.items()}
            assert call.out.name == call.fingerprint, (name, call.label)
            if call.stage not in ("sample", "train", "evaluate"):  # those add content identities
                assert stage_fingerprint(call.stage, call.settings, inputs) == call.fingerprint, (name, call.label)
            produced.add(call.out)
        labels = [c.label for c in calls]
        assert len(set(labels)) == len(labels), name


@needs_shared
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_the_plan_gives_the_fingerprints_the_flows_ran_with(planned, name):
    stable = {(c.stage, c.fingerprint) for c in planned[name] if c.stage in STABLE}
    assert stable == {tuple(x) for x in GOLDEN[name]}


@needs_shared
def test_the_shipped_example_is_make_real(planned):
    """examples/smollm2_svamp.json is the make-real distillation: a user who ran one reuses the other."""
    example = {(c.stage, c.fingerprint) for c in planned["examples/smollm2_svamp.json"]}
    assert example == {(c.stage, c.fingerprint) for c in planned["real"]}


@needs_shared
def test_test_fields_reach_decontaminate_in_distill_and_sweep_alike(planned):
    for name in ("real_test_fields", "real_sweep_test_fields"):
        for call in planned[name]:
            if call.stage in ("decontaminate", "evaluate"):
                assert call.settings.fields == {"gsm8k": {"question": "question", "answer": "answer"}}, call.label


def test_teachers_are_scored_unless_told_not_to(tmp_path):
    questions = demo_questions.fn(tmp_path / "store", 6, 3, 0)
    config = demo_config(DemoSettings(), questions, tmp_path / "store", tmp_path / "report")
    labels = {c.label for c in plan(config).calls}
    assert "evaluate teacher" in labels and "evaluate untrained" in labels
    quiet = {c.label for c in plan(config.model_copy(update={"evaluate_teachers": False})).calls}
    assert quiet == labels - {"evaluate teacher"}
