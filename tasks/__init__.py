"""Prefect tasks: one per stage, thin glue around ``mcckd.stages.execute``."""

from mcckd.runtime import configure_local_runtime

configure_local_runtime()
