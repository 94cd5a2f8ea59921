"""The sample stage on a Ray cluster: shards as a Ray Dataset, one vLLM engine per replica.

``sample.backend = "ray"`` hands the pending shards (:class:`mcckd.stages.sample.ShardPlan`) to
``Dataset.map_batches`` with :class:`ShardSampler`, a class of our own (``ray.data.llm`` pins older
vLLM versions than ours): each replica is a Ray actor that opens its engine once, samples one shard
a call with the same per-question seeds as the local path, and writes the shard file itself into the
stage's work folder. That folder must be storage every node sees (NFS, a PVC, a shared volume),
which is what lets a killed job resume from the shards already written, on any node.

Failures, and who handles them:

- an engine process that dies (killed, out of memory, a lost node) is restarted by Ray and its
  shard retried, ``restarts`` times (``max_restarts`` and ``max_task_retries`` of the actor);
- an engine that raises (a broken model, a bad request) fails the stage at once;
- either way the stage stops with one line naming the replica (actor, host, pid) and the shard,
  read from the replica's status file (``replicas/<actor>.json`` in the work folder), and the
  shards already written stay for the rerun.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from mcckd.settings import Settings

if TYPE_CHECKING:
    from mcckd.stages.sample import Progress, SampleSettings, ShardPlan


class RaySettings(Settings):
    """Where the sample stage's replicas run when ``backend = "ray"``."""

    address: str | None = Field(
        None,
        description="a running cluster: 'auto' (this node belongs to one), 'host:6379' or 'ray://host:10001'; "
        "None: RAY_ADDRESS if set (a deployment's), else a local cluster of this machine's cores, started and "
        "stopped by the stage",
    )
    replicas: int = Field(1, ge=1, description="vLLM engines, each a Ray actor")
    cpus_per_replica: float = Field(
        1, gt=0, description="CPUs Ray reserves per replica; a CPU engine is pinned to that many cores of its node"
    )
    gpus_per_replica: float = Field(0, ge=0, description="GPUs per replica (set the teacher's tensor_parallel_size)")
    restarts: int = Field(2, ge=0, description="times a replica that dies is restarted and its shard retried")
    shards_per_call: int = Field(
        4,
        ge=1,
        description="shards a replica's engine is given at once: it stays full across them, idle once per call "
        "instead of at the end of every shard (each shard is still written as it finishes)",
    )


@contextlib.contextmanager
def connected(settings: RaySettings) -> Iterator[None]:
    """Joins the cluster at ``address`` or ``RAY_ADDRESS`` (left running afterwards), or starts a
    local one of this process's cores (stopped afterwards)."""
    address = settings.address or os.environ.get("RAY_ADDRESS")  # a deployment's cluster (its job variables)
    if address and address.startswith("ray://") and has_token():
        # A driver turns token authentication on by itself when it finds a token; a Ray client (2.60)
        # does not, and its calls are refused without a word of why. Read when Ray is first imported.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address)  # a ray:// client takes no other arguments that matter here
    else:
        # "local": a new cluster of our own, never one a `ray start` left on this machine
        cores = len(os.sched_getaffinity(0))
        ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def has_token() -> bool:
    """Whether Ray would find a cluster token here: the variable, the file it names, or Ray's default file."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


def check_fits(settings: RaySettings) -> None:
    """Replicas that cannot all be placed would leave the stage waiting for ever: say so instead."""
    import ray

    total = ray.cluster_resources()
    for name, per in (("CPU", settings.cpus_per_replica), ("GPU", settings.gpus_per_replica)):
        if per and total.get(name, 0) < per:
            raise RuntimeError(
                f"sample.ray: a replica needs {per} {name}, the cluster has {total.get(name, 0):g} in all ({total})"
            )


def sample_on_ray(
    sample: SampleSettings, pending: list[ShardPlan], work_dir: Path, progress: Progress, started: float
) -> list[dict]:
    """Samples every pending shard on the cluster; progress counts each shard as it lands. Returns
    each replica's record: host, pid, starts (2 or more: Ray restarted it), shards written.

    Joined as a Ray client (``ray://``, how the recipes' stage runs reach their clusters), Ray Data
    cannot drive from here (its executor needs a core worker): the same driver then runs as a task
    inside the cluster, and this process counts the shard files as they land in the shared folder.
    """
    status_dir = work_dir / "replicas"
    status_dir.mkdir(parents=True, exist_ok=True)
    for old in status_dir.glob("*.json"):  # a previous attempt's replicas
        old.unlink()

    def written(index: int) -> None:
        progress.shard_written(pending[index].teacher.name, time.perf_counter() - started)

    with connected(sample.ray):
        import ray  # after connecting: a client's authentication is read at Ray's first import

        check_fits(sample.ray)
        if not ray.util.client.ray.is_connected():
            outcome = drive(sample, pending, status_dir, written)
        else:
            run = ray.remote(num_cpus=0, max_retries=0)(drive).remote(sample, pending, status_dir, None)
            seen: set[int] = set()
            while not ray.wait([run], timeout=2)[0]:
                for index in sorted(i for i, s in enumerate(pending) if i not in seen and s.path.is_file()):
                    seen.add(index)
                    written(index)
            outcome = ray.get(run)
            for index in sorted(set(range(len(pending))) - seen):
                written(index)
    if isinstance(outcome, str):
        raise RuntimeError(outcome)
    return outcome


def drive(
    sample: SampleSettings, pending: list[ShardPlan], status_dir: Path, written: Callable[[int], None] | None
) -> list[dict] | str:
    """The Ray Data job: every pending shard through the replicas. Returns the replicas' records, or
    the one line that says which replica failed on which shard."""
    import ray.data

    settings = sample.ray
    ray.data.DataContext.get_current().enable_progress_bars = False
    shards = ray.data.from_items([{"shard": i} for i in range(len(pending))], override_num_blocks=len(pending))
    done = shards.map_batches(
        ShardSampler,
        batch_size=settings.shards_per_call,
        concurrency=min(settings.replicas, len(pending)),
        num_cpus=settings.cpus_per_replica,
        num_gpus=settings.gpus_per_replica or None,
        fn_constructor_kwargs={"shards": pending, "settings": sample, "status_dir": status_dir},
        # Ray Data's default is to restart a replica for ever; a bounded count lets one that always dies stop.
        ray_remote_args_fn=lambda: {"max_restarts": settings.restarts, "max_task_retries": settings.restarts},
    )
    try:
        for row in done.iter_rows():
            if written is not None:
                written(row["shard"])
    except Exception as error:
        return failure_line(status_dir, error)
    return replica_statuses(status_dir)


def replica_statuses(status_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(status_dir.glob("*.json"))]


def failure_line(status_dir: Path, error: Exception) -> str:
    """One line: which replica failed on which shard, from the replicas' status files (a replica
    that raised says why; one that died is the one whose shard is neither finished nor on disk)."""
    statuses = replica_statuses(status_dir)
    failed = [s for s in statuses if s.get("error")]
    died = [s for s in statuses if s.get("shard") and not (status_dir.parent / "shards" / s["shard"]).is_file()]
    for s in failed or died:
        why = s.get("error") or f"its engine died (restarted {s['starts'] - 1} times)"
        return f"sample: replica {s['replica']} ({s['host']}, pid {s['pid']}) failed on shard {s['shard']}: {why}"
    first = str(error).strip().splitlines()
    return f"sample: the Ray job failed before any replica took a shard: {first[0] if first else type(error).__name__}"


def claim_cores(count: float) -> tuple[list[int], int | None]:
    """This replica's share of its node's cores, and the lock holding it (released when the process
    dies): replicas on one node take disjoint slots, as the local engines do. With every slot taken
    (Ray counts CPUs, not cores) the replica runs unpinned on all of them."""
    cores = sorted(os.sched_getaffinity(0))
    width = max(1, int(count))
    slots = max(1, len(cores) // width)
    lock_dir = Path(tempfile.gettempdir()) / "mcckd-core-slots"
    lock_dir.mkdir(exist_ok=True)
    for slot in range(slots):
        fd = os.open(lock_dir / f"{width}-{slot}.lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return cores[slot * width : (slot + 1) * width], fd
    return cores, None


class ShardSampler:
    """A Ray Data replica: one vLLM engine, opened at its first shard so that a failure names it."""

    def __init__(self, shards: list[ShardPlan], settings: SampleSettings, status_dir: Path) -> None:
        import ray

        self.shards, self.settings = shards, settings
        self.status = {
            "replica": ray.get_runtime_context().get_actor_id()[:8],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "starts": 1,
            "shard": None,
            "shards_done": 0,
            "error": None,
        }
        self.status_path = status_dir / f"{self.status['replica']}.json"
        if self.status_path.is_file():  # a restart: count it
            self.status["starts"] = json.loads(self.status_path.read_text())["starts"] + 1
        self.stack = contextlib.ExitStack()
        self.teacher = None
        self.report()

    def report(self) -> None:
        tmp = self.status_path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.status))
        os.replace(tmp, self.status_path)

    def __call__(self, batch: dict) -> dict:
        """Samples the batch's shards in one engine, writing each as it completes."""
        from mcckd.teachers import open_teacher

        indices = [int(i) for i in batch["shard"]]
        in_flight = {i: f"{self.shards[i].teacher.name}/{self.shards[i].path.name}" for i in indices}
        self.status["shard"] = next(iter(in_flight.values()))
        self.report()

        def write(index: int, completions: list) -> None:
            self.shards[index].write(completions, self.settings.sampling)
            del in_flight[index]
            self.status["shards_done"] += 1
            self.status["shard"] = next(iter(in_flight.values()), None)  # the one a failure would name
            self.report()

        try:
            teacher_spec = self.shards[indices[0]].teacher
            if self.teacher is None:
                if not teacher_spec.vllm.tensor_parallel_size > 1 and not self.uses_gpu():
                    cores, lock = claim_cores(self.cpus())
                    if lock is not None:
                        self.stack.callback(os.close, lock)
                    os.sched_setaffinity(0, cores)  # before vLLM starts: it binds its threads to these
                    os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
                self.teacher = self.stack.enter_context(open_teacher(teacher_spec))
            n, seed = self.settings.num_samples, self.settings.seed
            self.teacher.sample(
                self.settings.sampling,
                [(i, self.shards[i].requests(n, seed)) for i in indices],
                write,
                show_bar=False,  # the driver counts shards; a bar per shard from every replica is noise
            )
        except Exception as error:
            self.status["error"] = " ".join(str(error).split())[:300] or type(error).__name__
            self.report()
            raise
        return {"shard": indices}

    @staticmethod
    def uses_gpu() -> bool:
        import ray

        return bool(ray.get_runtime_context().get_accelerator_ids().get("GPU"))

    @staticmethod
    def cpus() -> float:
        import ray

        return ray.get_runtime_context().get_assigned_resources().get("CPU", 1)


def launch_on_nodes(
    command: Callable[[str, bool | None], list[str]], nodes: int, processes: int, rendezvous: str | None, log: Path
) -> None:
    """Runs ``command(endpoint, hosts_store)`` (a torchrun launcher) once on each of ``nodes`` distinct
    nodes of the connected cluster, each holding ``processes`` GPUs (or CPUs, on a cluster without
    GPUs) until it ends. The rendezvous is ``rendezvous`` (torchrun decides which node hosts its
    store: ``hosts_store`` None), or a free port on the first node, which is then told to host it:
    torchrun's guess (the endpoint is one of this machine's addresses) misses where Ray's node
    address is not what the host name resolves to. Node i's output goes to ``log`` with
    ``.node<i>`` appended; one that fails raises, naming the node and its log."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    device = "GPU" if ray.cluster_resources().get("GPU") else "CPU"
    group = placement_group([{device: processes}] * nodes, strategy="STRICT_SPREAD")
    ready, _ = ray.wait([group.ready()], timeout=600)
    if not ready:
        remove_placement_group(group)
        raise RuntimeError(f"train: {nodes} nodes with {processes} {device} each are not free in the cluster")
    try:
        on = [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i) for i in range(nodes)]
        resources = {"num_gpus": processes} if device == "GPU" else {"num_cpus": processes}
        free_endpoint, run_launcher = ray.remote(_free_endpoint), ray.remote(max_retries=0)(_run_launcher)
        endpoint = rendezvous or ray.get(free_endpoint.options(scheduling_strategy=on[0], num_cpus=0).remote())
        launched = [
            run_launcher.options(scheduling_strategy=on[i], **resources).remote(
                command(endpoint, None if rendezvous else i == 0), f"{log}.node{i}"
            )
            for i in range(nodes)
        ]
        for i, (host, code) in enumerate(ray.get(launched)):
            if code != 0:
                raise RuntimeError(f"train: node {i} ({host}) exited with {code} (log: {log}.node{i})")
    finally:
        remove_placement_group(group)


def _free_endpoint() -> str:
    """host:port on this node that the other nodes can reach, with the port free just now."""
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return f"{ray.util.get_node_ip_address()}:{port}"


def _run_launcher(command: list[str], log: str) -> tuple[str, int]:
    """One node's launcher, with this node's Python (the driver's path may not exist here)."""
    import subprocess
    import sys

    with open(log, "ab") as out:
        code = subprocess.run([sys.executable, *command[1:]], stdout=out, stderr=out).returncode
    return socket.gethostname(), code
