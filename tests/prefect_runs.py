"""Reading a flow run's task runs back from Prefect, as the UI shows them."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId


def task_states(flow_state) -> dict[str, list[str]]:
    """Task name -> state names of one flow run (its subflow-free task runs)."""
    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.split("-")[0], []).append(run.state.name)
    return states
