"""The stages (sample or import, judge, select, decontaminate, materialize, train, evaluate) and the
one way to run any of them: :func:`execute`.

Each stage module has a pydantic ``*Settings`` model, a ``STAGE_VERSION`` (bump it when the
stage's output for the same inputs changes) and ``run(settings, out_dir, **inputs) -> summary``.
:func:`execute` wraps ``run`` in an atomic, fingerprinted folder; the CLI (``python -m mcckd``)
and the Prefect tasks both call it, so a container, a test and the flow run exactly the same code.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from pydantic import BaseModel

from data_schemas import InputError
from mcckd.store import atomic_stage_dir, fingerprint, is_complete, read_manifest


@dataclass(frozen=True)
class Stage:
    """A stage, imported only when used: ``judge`` in a container need not load torch or vLLM."""

    name: str
    module_name: str
    settings_name: str
    inputs: tuple[str, ...]  # required inputs; test sets (evaluate, decontaminate) are named by the caller
    uses_accelerator: bool  # runs in its own process, so GPU memory is returned when it ends
    resumable: bool = False  # ``run`` takes a ``work_dir`` that outlives a killed run

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"mcckd.stages.{self.module_name}")

    @property
    def settings(self) -> type[BaseModel]:
        return getattr(self.module, self.settings_name)

    @property
    def version(self) -> int:
        return self.module.STAGE_VERSION


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("sample", "sample", "SampleSettings", ("questions",), True, resumable=True),
        Stage("import", "import_recorded", "ImportSettings", ("recorded",), False),
        Stage("judge", "judge", "JudgeSettings", ("samples",), False),
        Stage("select", "select", "SelectSettings", ("judged",), False),
        Stage("decontaminate", "decontaminate", "DecontaminateSettings", ("selected",), False),
        Stage("materialize", "materialize", "MaterializeSettings", ("selected",), False),
        Stage("train", "train", "TrainSettings", ("trainset",), True, resumable=True),
        Stage("evaluate", "evaluate", "EvaluateSettings", (), True),
    ]
}


def stage_fingerprint(stage: str, settings: BaseModel, input_fingerprints: dict[str, str]) -> str:
    """Everything that determines a stage's output: its code version, settings and inputs."""
    spec = STAGES[stage]
    return fingerprint(stage, spec.version, settings, input_fingerprints)


def work_dir_for(out_dir: Path) -> Path:
    """Where a resumable stage keeps shards and checkpoints: stable across runs, beside the output."""
    return out_dir.parent / f".work-{out_dir.name}"


def execute(stage: str, settings: BaseModel, out_dir: Path, inputs: dict[str, Path]) -> dict:
    """Run one stage into ``out_dir`` atomically; a complete folder is returned as is (no work).

    A resumable stage continues from its work folder if a previous run was killed; the work folder
    is removed once the output is complete. Under ``torchrun`` only rank 0 writes ``out_dir``;
    the other ranks write into a scratch folder that is thrown away.
    """
    if is_complete(out_dir):
        return read_manifest(out_dir)["summary"]
    spec = STAGES[stage]
    missing = [name for name in spec.inputs if name not in inputs]
    if missing:
        raise InputError(f"stage {stage!r} needs input(s) {missing} (--in NAME=PATH)")
    for name, path in inputs.items():
        if not Path(path).exists():
            raise InputError(f"{path}: input {name!r} of stage {stage!r} does not exist")
    kwargs = {k: Path(v) for k, v in inputs.items()}
    if spec.resumable:
        kwargs["work_dir"] = work_dir_for(out_dir)
    if int(os.environ.get("RANK", "0")) > 0:
        with tempfile.TemporaryDirectory(prefix=f"mcckd-{stage}-rank") as scratch:
            return spec.module.run(settings, Path(scratch), **kwargs)
    manifest = {"stage": stage, "version": spec.version, "settings": settings.model_dump(mode="json"), "inputs": inputs}
    with atomic_stage_dir(out_dir, manifest) as tmp:
        summary = spec.module.run(settings, tmp, **kwargs)
        manifest["summary"] = summary
    if spec.resumable:
        shutil.rmtree(kwargs["work_dir"], ignore_errors=True)
    return summary
