"""One Prefect task per stage. The work is ``mcckd.stages.execute``; these add caching and retries.

Cache key = the stage's fingerprint, so Prefect shows an unchanged stage as Cached and never
enters its body. Stages that hold an accelerator (sample, train, evaluate) run as a child process
(``python -m mcckd STAGE``), so vLLM and training never share a CUDA context and memory is
returned when the stage ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from pydantic import BaseModel
from tqdm.auto import tqdm

from mcckd.stages import STAGES, execute, work_dir_for
from mcckd.store import is_complete, lock_holder, read_manifest


class StageFailed(RuntimeError):
    """A stage's child process exited non-zero; its own output (above) says why."""


def _cache_key(context: TaskRunContext, parameters: dict) -> str:
    return f"{parameters['stage']}-{parameters['fingerprint']}"


def stage_command(
    stage: str,
    settings: BaseModel,
    inputs: dict[str, str],
    out_dir: str,
    rendezvous: str | None = None,
    hosts_store: bool | None = None,
) -> list[str]:
    """``python -m mcckd STAGE ...``, under ``torch.distributed.run`` when settings ask for processes > 1
    (one node) or nodes > 1 (the same command on every node, c10d rendezvous at ``rendezvous``;
    ``hosts_store`` says whether this node hosts the rendezvous store, None: torchrun guesses)."""
    processes, nodes = getattr(settings, "processes", 1), getattr(settings, "nodes", 1)
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    if nodes > 1:
        endpoint = rendezvous or settings.rendezvous
        if not endpoint:
            raise ValueError(f"{stage}: nodes = {nodes} needs a rendezvous endpoint (host:port on one of the nodes)")
        # The run's folder names it: every node's launcher joins the same rendezvous, and no other run's.
        launcher = [*torchrun, f"--nproc_per_node={processes}", f"--nnodes={nodes}", "--rdzv_backend=c10d"]
        launcher += [f"--rdzv_endpoint={endpoint}", f"--rdzv_id={Path(out_dir).name}"]
        if hosts_store is not None:
            launcher.append(f"--rdzv_conf=is_host={int(hosts_store)}")
    elif processes > 1:
        launcher = [*torchrun, "--standalone", f"--nproc_per_node={processes}"]
    else:
        launcher = [sys.executable]
    cmd = [*launcher, "-m", "mcckd", stage, "--out", out_dir, "--settings", settings.model_dump_json()]
    return cmd + [arg for name, path in inputs.items() for arg in ("--in", f"{name}={path}")]


def _run_stage(
    stage: str,
    settings: BaseModel,
    inputs: dict[str, str],
    out_dir: str,
    fingerprint: str,
    threads: int | None = None,
    deployment: str | None = None,
) -> str:
    """Run one stage here, or as a run of ``deployment`` (the ``stage`` flow on another work pool).

    ``threads`` caps the child's CPU threads when stages share the machine.
    """
    if deployment:
        return run_remote(deployment, stage, settings, inputs, out_dir, fingerprint, threads)
    return run_here(stage, settings, inputs, out_dir, fingerprint, threads)


def run_remote(
    deployment: str,
    stage: str,
    settings: BaseModel,
    inputs: dict[str, str],
    out_dir: str,
    fingerprint: str,
    threads: int | None,
) -> str:
    """One run of the ``stage`` deployment, waited for; the worker writes into the shared store."""
    from prefect.deployments import run_deployment

    parameters = dict(
        stage=stage,
        settings=settings.model_dump(mode="json"),
        inputs=inputs,
        out_dir=out_dir,
        fingerprint=fingerprint,
        threads=threads,
    )
    run = run_deployment(deployment, parameters=parameters, timeout=None)
    if not run.state.is_completed() or not is_complete(Path(out_dir)):
        raise StageFailed(f"stage {stage} (fingerprint {fingerprint}) as {deployment} run {run.name}: {run.state.name}")
    return out_dir


def run_here(
    stage: str, settings: BaseModel, inputs: dict[str, str], out_dir: str, fingerprint: str, threads: int | None = None
) -> str:
    """Run one stage on this machine: in this process, or its own child process if it holds an accelerator."""
    started = time.monotonic()
    if getattr(settings, "nodes", 1) > 1:
        return run_on_nodes(stage, settings, inputs, out_dir, fingerprint, started)
    if not STAGES[stage].uses_accelerator:
        execute(stage, settings, Path(out_dir), {k: Path(v) for k, v in inputs.items()})
        say_if_reused(stage, Path(out_dir), started, os.getpid())
        return out_dir
    announced = announce_wait(stage, Path(out_dir), None)  # the child waits for it; say so here, where it is seen
    # Its own process group: vLLM's engine processes are the child's children, and a child that dies
    # (killed, crashed) would leave them holding their memory. The group goes when the stage ends.
    # Its output (library warnings, its own bars) goes to the stage's log file; the console gets a
    # progress bar from the child's progress.json and, from the flow, one line per stage.
    # With ``threads``, the child is pinned to that many cores of its own (CORES) where they are free.
    env = os.environ | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    log_path = stage_log(Path(out_dir))
    log_path.parent.mkdir(parents=True, exist_ok=True)  # the first stage of its kind in this store
    progress = work_dir_for(Path(out_dir)) / "progress.json"
    artifact, bar = None, None
    with open(log_path, "ab") as log, CORES.take(threads or 0) as cores:
        child = subprocess.Popen(
            stage_command(stage, settings, inputs, out_dir), start_new_session=True, env=env, stdout=log, stderr=log
        )
        if cores:  # the child has just exec'd: one thread, whose later threads inherit the mask
            os.sched_setaffinity(child.pid, cores)
        try:
            while True:
                try:
                    code = child.wait(timeout=2)
                    break
                except subprocess.TimeoutExpired:
                    announced = announced or announce_wait(stage, Path(out_dir), child.pid)
                    record = read_progress(progress)
                    if record:
                        artifact = report_progress(stage, record, artifact)
                        bar = bar or tqdm(total=record["total"], desc=stage, unit=record.get("unit", "it"))
                        bar.update(record["done"] - bar.n)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            if bar is not None:
                if child.returncode == 0:  # the last progress.json may predate the end
                    bar.update(bar.total - bar.n)
                    report_progress(stage, {"done": bar.total, "total": bar.total}, artifact)
                bar.close()
    if code != 0 or not is_complete(Path(out_dir)):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
        raise StageFailed(
            f"stage {stage} (fingerprint {fingerprint}) exited with {code} without completing {out_dir}: "
            f"{tail[0] if tail else 'no output'} (log: {log_path})"
        )
    say_if_reused(stage, Path(out_dir), started, child.pid)
    return out_dir


def run_on_nodes(
    stage: str, settings: BaseModel, inputs: dict[str, str], out_dir: str, fingerprint: str, started: float
) -> str:
    """The stage's launcher on ``settings.nodes`` nodes of the Ray cluster, each writing its own log
    beside the output folder; rank 0 (on whichever node) writes the output to the shared store."""
    from mcckd.cluster import RaySettings, connected, launch_on_nodes

    log_path = stage_log(Path(out_dir))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with connected(RaySettings()):
        launch_on_nodes(
            lambda endpoint, hosts_store: stage_command(stage, settings, inputs, out_dir, endpoint, hosts_store),
            settings.nodes,
            settings.processes,
            settings.rendezvous,
            log_path,
        )
    if not is_complete(Path(out_dir)):
        raise StageFailed(
            f"stage {stage} (fingerprint {fingerprint}) on {settings.nodes} nodes left {out_dir} incomplete"
        )
    say_if_reused(stage, Path(out_dir), started, os.getpid())
    return out_dir


def announce_wait(stage: str, out_dir: Path, child: int | None) -> bool:
    """Say on the console that another run holds ``out_dir``'s lock (this run's stage waits for it);
    checked before the child starts and again while it runs, as the other run may take the lock
    after this one first looked. The child's own process group (``child``) holding it is no wait."""
    holder = None if is_complete(out_dir) else lock_holder(out_dir)
    if not holder:
        return False
    if child is not None and holder.get("host") == socket.gethostname():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(holder["pid"]) == child:
                return False
    tqdm.write(f"waiting for stage {stage} (held by {holder.get('host')}:{holder.get('pid')})")
    return True


def say_if_reused(stage: str, out_dir: Path, started: float, runner: int) -> None:
    """One console line when another run wrote ``out_dir`` (this one waited for it, or found it done):
    the manifest names its writer, and ``runner`` (this process, or the stage's child, which is the
    writer or, under torchrun, the writer's parent) did not write it."""
    writer = read_manifest(out_dir).get("writer")
    if writer and (writer["host"] != socket.gethostname() or runner not in (writer["pid"], writer["parent"])):
        tqdm.write(
            f"{stage}: reused {out_dir.name}, computed by {writer['host']}:{writer['pid']} "
            f"({time.monotonic() - started:.1f} s in this run)"
        )


class CorePool:
    """This process's cores, handed out to stage children that run at the same time (trainings,
    evaluations side by side), so that each runs on cores of its own.

    A child with ``threads`` cores and no core pinning is not enough: vLLM's CPU backend binds its
    threads to every core the process may use, so two engines side by side would share both.
    Pinned, two one-core evaluations of the demo world run in the time of one on two cores.
    """

    def __init__(self) -> None:
        self._free = sorted(os.sched_getaffinity(0))
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self, n: int) -> Iterator[list[int]]:
        """``n`` free cores while the block runs; none (no pinning) if fewer than ``n`` are free."""
        with self._lock:
            cores = self._free[:n] if len(self._free) >= n else []
            self._free = [c for c in self._free if c not in cores]
        try:
            yield cores
        finally:
            with self._lock:
                self._free = sorted(self._free + cores)


CORES = CorePool()


def stage_log(out_dir: Path) -> Path:
    """The stage's log file, beside its output folder (the CLI's default ``--log``)."""
    return out_dir.with_name(out_dir.name + ".log")


def read_progress(path: Path) -> dict | None:
    """The child's ``progress.json``, or None before it exists (or while it is being replaced)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def report_progress(stage: str, record: dict, artifact: UUID | None) -> UUID | None:
    """Mirror the child's progress into a Prefect progress artifact (percent done)."""
    percent = 100.0 * record["done"] / max(1, record["total"])
    if artifact is None:  # the description stays as created: name the whole, not the part done
        what = f"{record['total']} {record.get('unit', '')}".strip()
        return create_progress_artifact(percent, key=f"{stage}-progress", description=f"{stage}: {what} in all")
    update_progress_artifact(artifact, percent)
    return artifact


def _stage_task(stage: str, retries: int):
    return task(
        _run_stage,
        name=stage,
        task_run_name=f"{stage}-{{fingerprint}}",
        cache_key_fn=_cache_key,
        persist_result=True,
        result_serializer="json",
        retries=retries,
        retry_delay_seconds=10,
    )


# One task per declared stage, retried as its declaration says.
TASKS = {name: _stage_task(name, spec.retries) for name, spec in STAGES.items()}
