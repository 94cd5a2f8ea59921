"""One stage as a flow of its own, so a deployment per work pool can run it (``prefect.yaml``).

The distill flow sends a stage here when ``DistillConfig.stage_deployments`` names a deployment for
its kind (accelerator stages to a GPU pool, the rest to a CPU pool); the worker that picks the run
up executes it exactly as the local flow would (``tasks.stages.run_here``), into the shared store.
"""

from __future__ import annotations

from prefect import flow

from mcckd.stages import STAGES
from tasks.stages import run_here


@flow(name="stage", flow_run_name="{stage}-{fingerprint}")
def stage(
    stage: str, settings: dict, inputs: dict[str, str], out_dir: str, fingerprint: str, threads: int | None = None
) -> str:
    """Run ``stage`` with ``settings`` (its settings model as JSON) into ``out_dir``."""
    parsed = STAGES[stage].settings.model_validate(settings)
    return run_here(stage, parsed, inputs, out_dir, fingerprint, threads)
