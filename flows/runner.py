"""Execute a plan's stage calls as Prefect tasks: one at a time, or several side by side on cores of
their own, with one console line per stage.

Each call goes to its stage's task (``tasks.stages.TASKS``), whose cache key is the call's
fingerprint, so an unchanged stage is a Prefect cache hit that never enters its body.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from prefect.futures import wait
from prefect.states import State
from tqdm.auto import tqdm

from flows.config import RunConfig, StudentMethod
from flows.plan import Curation, Ref, StageCall, Student
from mcckd import report
from mcckd.stages import STAGES
from tasks.stages import TASKS

K = TypeVar("K")  # what names a call among others: (method, seed) in distill, (cell, method, seed) in a sweep


def task_call(config: RunConfig, call: StageCall):
    """The Prefect task of ``call`` and its keyword arguments."""
    deployments = config.stage_deployments
    # A cache record whose folder was deleted must not hit: refresh it instead.
    task = TASKS[call.stage].with_options(refresh_cache=not call.stored)
    kwargs = dict(
        stage=call.stage,
        settings=call.settings,
        inputs={k: str(r.input_path) for k, r in call.inputs.items()},
        out_dir=str(call.out),
        fingerprint=call.fingerprint,
        deployment=deployments
        and (deployments.accelerator if STAGES[call.stage].uses_accelerator else deployments.cpu),
    )
    return task, kwargs


def say(label: str, out: Path, state: State) -> None:
    """One line per stage on the console, beside the progress bars (log_prints would send it to the log)."""
    tqdm.write(report.stage_line(label, out, cached=state.name == "Cached"))


def run_call(config: RunConfig, call: StageCall) -> Ref:
    """Run (or reuse) one stage, wait for it and say on the console what it produced."""
    task, kwargs = task_call(config, call)
    state = task(**kwargs, return_state=True)
    state.result()  # raises the stage's failure
    say(call.label, call.out, state)
    return call.ref


def run_curation(config: RunConfig, curation: Curation) -> None:
    """The curation chain in order; says which test sets the training questions overlapped."""
    for call in curation:
        run_call(config, call)
        if call.stage == "decontaminate":
            for line in report.contamination_lines(call.out, call.label):
                tqdm.write(line)


def run_side_by_side(config: RunConfig, calls: dict[K, StageCall], at_once: int) -> dict[K, Ref]:
    """Run calls ``at_once`` at a time; one console line each.

    Stored ones come back at once; the rest run in batches, each child pinned to its share of the
    cores (a cached run in a batch would leave its share idle).
    """
    stored = [key for key, call in calls.items() if call.stored]
    to_run = [key for key in calls if key not in stored]
    batches = [stored, *(to_run[i : i + at_once] for i in range(0, len(to_run), at_once))]
    threads = max(1, (os.cpu_count() or 1) // at_once)
    for batch in batches:
        futures = {}
        for key in batch:
            task, kwargs = task_call(config, calls[key])
            futures[key] = task.submit(**kwargs, threads=threads)
        wait(list(futures.values()))
        for key, future in futures.items():
            future.result()  # raises the stage's failure
            say(calls[key].label, calls[key].out, future.state)
    return {key: call.ref for key, call in calls.items()}


def run_students(config: RunConfig, students: dict[K, Student]) -> None:
    """Every training side by side, then (with a validation split) every checkpoint's validation
    evaluation side by side, then each choice."""
    run_side_by_side(config, {key: s.train for key, s in students.items()}, config.parallel_trains)
    checkpoints = {(key, name): call for key, s in students.items() for name, call in s.validations.items()}
    run_side_by_side(config, checkpoints, config.parallel_evals)
    for student in students.values():
        if student.choose is not None:
            run_call(config, student.choose)


def announce(calls: list[StageCall], what: str) -> list[dict]:
    """Say what the plan holds before anything runs; the rows of its table artifact."""
    rows = [call.row() for call in calls]
    to_run = [r for r in rows if r["state"] == "to run"]
    tqdm.write(f"{what} plan: {len(rows)} stages, {len(rows) - len(to_run)} stored, {len(to_run)} to run")
    return rows


def warn_small_training_sets(
    methods: dict[str, StudentMethod], trainsets: dict[str, Path], min_rationales: int
) -> list[str]:
    """Each training set too small to mean anything, said on the console before any training.
    ``trainsets``: label -> materialize folder; a label ("" for a distillation's one set, a cell's
    name in a sweep) starts each of its lines."""
    consistency = [name for name, m in methods.items() if m.train.loop.uses_consistency]
    lines = [
        f"{label}: {line}" if label else line
        for label, trainset in trainsets.items()
        for line in report.training_set_warnings(trainset, consistency, min_rationales)
    ]
    for line in lines:
        tqdm.write(f"warning: {line}")
    return lines
