"""The stages (sample or import, judge, select, decontaminate, materialize, train, evaluate) and the
one way to run any of them: :func:`execute`.

Each stage module declares itself once, as ``STAGE`` (:class:`mcckd.stages.spec.StageSpec`): its
name, bounded pydantic settings, code version, inputs and outputs (file names with their schemas),
and has ``run(settings, out_dir, **inputs) -> summary``. Everything else derives from
:data:`STAGES`: the Prefect tasks, the flows' plan, the CLI and the readers of a stage's files
(:func:`output`). :func:`execute` wraps ``run`` in an atomic, fingerprinted folder; the CLI
(``python -m mcckd``) and the Prefect tasks both call it, so a container, a test and the flow run
exactly the same code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel

from data_schemas import InputError
from mcckd.stages import (
    choose,
    decontaminate,
    evaluate,
    export,
    holdout,
    import_recorded,
    judge,
    materialize,
    sample,
    select,
    train,
)
from mcckd.stages.spec import StageSpec
from mcckd.store import atomic_stage_dir, fingerprint, is_complete, read_manifest, stage_lock, wait_for_launch_leader

# In pipeline order: each module's ``STAGE`` and its ``run``.
_MODULES = {
    m.STAGE.name: m
    for m in (
        sample,
        import_recorded,
        holdout,
        judge,
        select,
        decontaminate,
        materialize,
        train,
        evaluate,
        choose,
        export,
    )
}
STAGES: dict[str, StageSpec] = {name: m.STAGE for name, m in _MODULES.items()}


def output(stage: str, out_dir: Path, name: str | None = None) -> Path:
    """The file ``name`` (default: the main output) in a folder of ``stage``: what readers ask for."""
    return STAGES[stage].path(out_dir, name)


def resolve_input(path: Path) -> Path:
    """An input given as a complete stage folder means that stage's main output (what the next
    stage reads), so the CLI and containers can pass folders: ``--in samples=runs/import``."""
    return output(read_manifest(path)["stage"], path) if path.is_dir() and is_complete(path) else path


def stage_fingerprint(stage: str, settings: BaseModel, input_fingerprints: dict[str, str]) -> str:
    """Everything that determines a stage's output: its code version, settings and inputs."""
    return fingerprint(stage, STAGES[stage].version, settings, input_fingerprints)


def work_dir_for(out_dir: Path) -> Path:
    """Where a resumable stage keeps shards and checkpoints: stable across runs, beside the output."""
    return out_dir.parent / f".work-{out_dir.name}"


def execute(stage: str, settings: BaseModel, out_dir: Path, inputs: dict[str, Path]) -> dict:
    """Run one stage into ``out_dir`` atomically; a complete folder is returned as is (no work).

    A resumable stage continues from its work folder if a previous run was killed; the work folder
    is removed once the output is complete. Under ``torchrun`` only rank 0 writes ``out_dir``;
    the other ranks write into a scratch folder that is thrown away.

    Runs sharing a store compute a folder once: "complete? run, rename" happens under the folder's
    lock (:func:`mcckd.store.stage_lock`), so a run that finds another computing it waits and then
    returns the stored summary, with ``reused_after_wait_s`` added. Ranks > 0 take no lock: they
    wait until rank 0 of their launch holds it, or reuse the folder rank 0 reuses.
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
    kwargs = {k: resolve_input(Path(v)) for k, v in inputs.items()}
    if spec.resumable:
        kwargs["work_dir"] = work_dir_for(out_dir)
    if int(os.environ.get("RANK", "0")) > 0:
        if not wait_for_launch_leader(out_dir):
            return read_manifest(out_dir)["summary"]
        with tempfile.TemporaryDirectory(prefix=f"mcckd-{stage}-rank") as scratch:
            return _MODULES[stage].run(settings, Path(scratch), **kwargs)
    manifest = {
        "stage": stage,
        "version": spec.version,
        "settings": settings.model_dump(mode="json"),
        "inputs": {k: kwargs[k] for k in inputs},
    }
    with stage_lock(out_dir) as waited:
        if is_complete(out_dir):  # another run computed it while this one waited
            return {**read_manifest(out_dir)["summary"], "reused_after_wait_s": round(waited, 1)}
        with atomic_stage_dir(out_dir, manifest) as tmp:
            summary = _MODULES[stage].run(settings, tmp, **kwargs)
            manifest["summary"] = summary
        if spec.resumable:
            shutil.rmtree(kwargs["work_dir"], ignore_errors=True)
    return summary
