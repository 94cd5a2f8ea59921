"""The stages (sample or import, judge, select, materialize, train, evaluate) and the one way to
run any of them: :func:`execute`.

Each stage module has a pydantic ``*Settings`` model, a ``STAGE_VERSION`` (bump it when the
stage's output for the same inputs changes) and ``run(settings, out_dir, **inputs) -> summary``.
:func:`execute` wraps ``run`` in an atomic, fingerprinted folder; the CLI (``python -m mcckd``)
and the Prefect tasks both call it, so a container, a test and the flow run exactly the same code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from pydantic import BaseModel

from mcckd.store import atomic_stage_dir, fingerprint, is_complete, read_manifest


@dataclass(frozen=True)
class Stage:
    """A stage, imported only when used: ``judge`` in a container need not load torch or vLLM."""

    name: str
    module_name: str
    settings_name: str
    inputs: tuple[str, ...]  # named inputs; () = named by the caller (evaluate: one per test split)
    uses_accelerator: bool  # runs in its own process, so GPU memory is returned when it ends

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
        Stage("sample", "sample", "SampleSettings", ("questions",), True),
        Stage("import", "import_recorded", "ImportSettings", ("recorded",), False),
        Stage("judge", "judge", "JudgeSettings", ("samples",), False),
        Stage("select", "select", "SelectSettings", ("judged",), False),
        Stage("materialize", "materialize", "MaterializeSettings", ("selected",), False),
        Stage("train", "train", "TrainSettings", ("trainset",), True),
        Stage("evaluate", "evaluate", "EvaluateSettings", (), True),
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
        summary = spec.module.run(settings, tmp, **{k: Path(v) for k, v in inputs.items()})
        manifest["summary"] = summary
    return summary
