"""The six stages and the one way to run any of them: :func:`execute`.

Each stage module has a pydantic ``*Settings`` model, a ``STAGE_VERSION`` (bump it when the
stage's output for the same inputs changes) and ``run(settings, out_dir, **inputs) -> summary``.
:func:`execute` wraps ``run`` in an atomic, fingerprinted folder; the CLI (``python -m mcckd``)
and the Prefect tasks both call it, so a container, a test and the flow run exactly the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from pydantic import BaseModel

from mcckd.stages import evaluate, import_recorded, judge, materialize, sample, select, train
from mcckd.store import atomic_stage_dir, fingerprint, is_complete, read_manifest


@dataclass(frozen=True)
class Stage:
    name: str
    settings: type[BaseModel]
    run: Callable[..., dict]
    version: int
    inputs: tuple[str, ...]  # named Parquet/folder inputs; () with ``any_inputs`` = named by the caller
    uses_accelerator: bool  # runs in its own process, so GPU memory is returned when it ends
    any_inputs: bool = False


def _stage(name: str, module: ModuleType, settings: type[BaseModel], inputs: tuple[str, ...], accel: bool) -> Stage:
    return Stage(name, settings, module.run, module.STAGE_VERSION, inputs, accel, any_inputs=not inputs)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        _stage("sample", sample, sample.SampleSettings, ("questions",), True),
        _stage("import", import_recorded, import_recorded.ImportSettings, ("recorded",), False),
        _stage("judge", judge, judge.JudgeSettings, ("samples",), False),
        _stage("select", select, select.SelectSettings, ("judged",), False),
        _stage("materialize", materialize, materialize.MaterializeSettings, ("selected",), False),
        _stage("train", train, train.TrainSettings, ("trainset",), True),
        _stage("evaluate", evaluate, evaluate.EvaluateSettings, (), True),  # one input per test split
    ]
}


def stage_fingerprint(stage: str, settings: BaseModel, input_fingerprints: dict[str, str]) -> str:
    """Everything that determines a stage's output: its code version, settings and inputs."""
    spec = STAGES[stage]
    return fingerprint(stage, spec.version, settings, input_fingerprints)


def execute(stage: str, settings: BaseModel, out_dir: Path, inputs: dict[str, Path]) -> dict:
    """Run one stage into ``out_dir`` atomically; a complete folder is returned as is (no work)."""
    if is_complete(out_dir):
        return read_manifest(out_dir)["summary"]
    spec = STAGES[stage]
    missing = [name for name in spec.inputs if name not in inputs]
    if missing:
        raise ValueError(f"stage {stage!r} needs input(s) {missing}")
    for name, path in inputs.items():
        if not Path(path).exists():
            raise FileNotFoundError(f"stage {stage!r}: input {name!r} does not exist: {path}")
    manifest = {"stage": stage, "version": spec.version, "settings": settings.model_dump(mode="json"), "inputs": inputs}
    with atomic_stage_dir(out_dir, manifest) as tmp:
        summary = spec.run(settings, tmp, **{k: Path(v) for k, v in inputs.items()})
        manifest["summary"] = summary
    return summary
