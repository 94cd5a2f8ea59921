"""Runs that share a store: a stage folder is computed once, the run that needs it meanwhile waits
and reuses it, a killed holder leaves no lock behind, and other fingerprints never wait.

The fast tests hold :func:`mcckd.store.stage_lock` from real processes; the slow ones run two real
distill flows on one store at once, and kill a real sampling stage while it holds its lock.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from data_schemas import SAMPLES, write_table
from mcckd.paths import PROJECT_ROOT
from mcckd.stages import execute
from mcckd.stages.judge import JudgeSettings
from mcckd.store import lock_holder, lock_path, read_manifest, stage_lock, wait_for_launch_leader
from tests.test_curation_stages import ROWS

# Holds the lock of argv[1] until a line arrives on stdin (or stdin closes).
HOLD = """
import sys
from pathlib import Path
from mcckd.store import stage_lock
with stage_lock(Path(sys.argv[1])) as waited:
    print(f"held {waited:.3f}", flush=True)
    sys.stdin.readline()
"""


def hold(out_dir: Path, stderr=subprocess.DEVNULL, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process that takes ``out_dir``'s lock (once it can), says ``held SECONDS_WAITED`` and keeps it."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out_dir)],
        cwd=PROJECT_ROOT,
        env=os.environ | (env or {}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def held(proc: subprocess.Popen) -> float:
    line = proc.stdout.readline()
    assert line.startswith("held "), line
    return float(line.split()[1])


def test_a_second_process_waits_for_the_holder_and_says_whose_lock(tmp_path):
    out = tmp_path / "store" / "judge" / "0123456789abcdef"
    first = hold(out)
    held(first)
    assert lock_holder(out)["pid"] == first.pid
    log = tmp_path / "second.err"
    with log.open("w") as err:
        second = hold(out, stderr=err)
        deadline = time.time() + 30
        while "waiting for stage" not in log.read_text():
            assert second.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.5)
        assert second.poll() is None  # still waiting
        line = f"waiting for stage judge 0123456789abcdef (held by {socket.gethostname()}:{first.pid})"
        assert log.read_text().strip() == line
        first.communicate("\n")
        waited = held(second)
        second.communicate("\n")
    assert waited >= 0.5
    assert lock_path(out).exists()  # never deleted: deleting lock files races
    assert lock_holder(out) is None


def test_other_fingerprints_never_wait(tmp_path):
    store = tmp_path / "store"
    first = hold(store / "sample" / "aaaa")
    held(first)
    try:
        with stage_lock(store / "sample" / "bbbb") as waited:
            assert waited < 0.2
        with stage_lock(store / "train" / "aaaa") as waited:  # same fingerprint text, other stage
            assert waited < 0.2
    finally:
        first.communicate("\n")


def test_a_killed_holder_leaves_no_lock(tmp_path):
    out = tmp_path / "store" / "train" / "feedface"
    first = hold(out)
    held(first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert lock_path(out).exists() and lock_holder(out) is None
    started = time.monotonic()
    with stage_lock(out) as waited:
        took = time.monotonic() - started
    print(f"\nlock of a SIGKILLed holder acquired after {took * 1000:.1f} ms")
    assert waited < 0.2


def _say_ready_and_sleep(ready, seconds: float) -> None:
    ready.set()  # the fork handlers have run by now
    time.sleep(seconds)


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """vLLM forks its engine processes from the stage: an orphaned engine must not hold the lock."""
    out = tmp_path / "store" / "sample" / "f0"
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    with stage_lock(out):
        child = fork.Process(target=_say_ready_and_sleep, args=(ready, 30))
        child.start()
        assert ready.wait(30)
    try:
        fd = os.open(lock_path(out), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the child's copy kept it
        finally:
            os.close(fd)
    finally:
        child.kill()
        child.join()


def test_execute_computes_once_when_two_threads_need_the_same_folder(tmp_path):
    samples = write_table(ROWS, tmp_path / "samples_in.parquet", SAMPLES)
    out = tmp_path / "store" / "judge" / "fp"
    summaries: list[dict] = []

    def judge() -> None:
        summaries.append(execute("judge", JudgeSettings(), out, {"samples": samples}))

    with stage_lock(out):  # both threads arrive while the folder is locked, then take turns
        threads = [threading.Thread(target=judge) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
    for t in threads:
        t.join()
    reused = [s for s in summaries if "reused_after_wait_s" in s]
    computed = [s for s in summaries if "reused_after_wait_s" not in s]
    assert len(reused) == len(computed) == 1
    assert reused[0]["reused_after_wait_s"] >= 0.5
    assert {k: v for k, v in reused[0].items() if k != "reused_after_wait_s"} == computed[0]
    assert read_manifest(out)["writer"]["pid"] == os.getpid()
    assert not list(out.parent.glob(".tmp-*"))


def test_ranks_above_0_wait_for_their_own_rank_0(tmp_path, monkeypatch):
    """Under torchrun only rank 0 locks; the others start once it holds the lock, or reuse the folder
    it reuses (another launch's lock or a finished folder must not start them on their own)."""
    out = tmp_path / "store" / "train" / "fp"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "ours")
    other = hold(out, env={"TORCHELASTIC_RUN_ID": "theirs"})
    held(other)
    result: list[bool] = []
    rank1 = threading.Thread(target=lambda: result.append(wait_for_launch_leader(out, poll_s=0.05)))
    rank1.start()
    time.sleep(0.5)
    assert not result  # another launch holds it: wait
    other.communicate("\n")
    ours = hold(out, env={"TORCHELASTIC_RUN_ID": "ours"})
    held(ours)
    rank1.join(10)
    assert result == [True]  # our rank 0 holds it: compute along
    ours.communicate("\n")
    (out / "manifest.json").parent.mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    assert wait_for_launch_leader(out) is False  # complete: reuse, as rank 0 does


# ---------------------------------------------------------------------------------------------------
# Real runs


def prefect_env(home: Path) -> dict[str, str]:
    """This environment with a Prefect home (and so an embedded SQLite database) of its own: two
    temporary Prefect servers on one SQLite file contend for its write lock ("database is locked",
    PrefectHQ/prefect#18934 even with one). What the runs share is the store."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_MEMO_STORE_PATH": str(home / "memo_store.toml"),
        # Two temporary servers creating their databases at once on two busy cores can miss the
        # default 20 s.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }


def watch_temp_folders(store: Path, stop: threading.Event, seen: dict[str, set[str]]) -> None:
    """Note every ``.tmp-<fingerprint>-<pid>`` folder (a stage being computed) while the runs go:
    a folder computed twice would show two pids."""
    while not stop.is_set():
        for tmp in store.glob("*/.tmp-*"):
            fp, _, pid = tmp.name.removeprefix(".tmp-").rpartition("-")
            seen.setdefault(fp, set()).add(pid)
        time.sleep(0.05)


@pytest.mark.slow
def test_two_flows_on_one_store_compute_each_stage_once(tmp_path):
    from flows.demo import DemoSettings, demo_config, demo_questions

    tiny = DemoSettings(
        train_questions=6,
        test_questions=3,
        sample={"num_samples": 3},
        loop={"epochs": 1, "questions_per_batch": 4},
        seeds=[0],
    )
    store = tmp_path / "store"
    questions = demo_questions.fn(store, tiny.train_questions, tiny.test_questions, tiny.data_seed)
    runs = {}
    stop, seen = threading.Event(), {}
    watcher = threading.Thread(target=watch_temp_folders, args=(store, stop, seen), daemon=True)
    watcher.start()
    for i, name in enumerate("ab"):
        config = demo_config(tiny, questions, store, tmp_path / f"report-{name}")
        # One student, one test set, no teacher scoring: every kind of stage, at the least cost.
        only = {
            "students": {"mcc_kd": config.students["mcc_kd"]},
            "test_sets": {"id": config.test_sets["id"]},
            "evaluate_teachers": False,
        }
        config = config.model_copy(update=only)
        path = tmp_path / f"config-{name}.json"
        path.write_text(config.model_dump_json())
        if i:
            time.sleep(2)
        console = (tmp_path / f"console-{name}.txt").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.distill", "--config", str(path)],
            cwd=PROJECT_ROOT,
            env=prefect_env(tmp_path / f"prefect-{name}"),
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        runs[name] = (proc, time.monotonic(), console)
    walls = {}
    for name, (proc, started, console) in runs.items():
        code = proc.wait(timeout=1500)
        walls[name] = time.monotonic() - started
        console.close()
        text = (tmp_path / f"console-{name}.txt").read_text()
        assert code == 0, text[-3000:]
    stop.set()
    watcher.join()

    pids = {name: proc.pid for name, (proc, _, _) in runs.items()}
    consoles = {name: (tmp_path / f"console-{name}.txt").read_text() for name in runs}
    folders = sorted(p.parent for p in store.glob("*/*/manifest.json") if p.parent.parent.name != "questions")
    assert {f.parent.name for f in folders} >= {"sample", "judge", "select", "materialize", "train", "evaluate"}
    print()
    for folder in folders:
        writer = read_manifest(folder)["writer"]
        [by] = [n for n, pid in pids.items() if pid in (writer["pid"], writer["parent"])]
        [other] = set(runs) - {by}
        reused = [line for line in consoles[other].splitlines() if f": reused {folder.name}," in line]
        assert len(reused) == 1, (folder, consoles[other][-3000:])  # the other run reused it
        assert f": reused {folder.name}," not in consoles[by]
        assert len(seen.get(folder.name, ())) <= 1, (folder, seen[folder.name])  # computed by one process
        print(f"{folder.parent.name} {folder.name}: computed by run {by}; run {other}: {reused[0]}")
    assert not list(store.glob("*/.tmp-*"))
    waits = {n: [line for line in c.splitlines() if line.startswith("waiting for stage")] for n, c in consoles.items()}
    for name in runs:
        print(f"run {name}: {walls[name]:.1f} s in all; " + ("; ".join(waits[name]) or "waited for no stage"))
    assert waits["b"], consoles["b"][-3000:]  # started 2 s later, it waited for a's sampling
    metrics = {name: json.loads((tmp_path / f"report-{name}" / "metrics.json").read_text()) for name in runs}
    assert metrics["a"] == metrics["b"]


@pytest.mark.slow
def test_a_stage_killed_while_holding_its_lock_is_resumed_at_once(tmp_path):
    from flows.demo import SMALL_ENGINE
    from mcckd.demo_world.assets import TEACHER_DIR
    from mcckd.stages import work_dir_for
    from mcckd.stages.sample import SampleSettings
    from mcckd.teachers import TeacherSpec
    from tests.demo_questions import questions_file

    q = questions_file(tmp_path / "q.parquet", 24)
    out = tmp_path / "store" / "sample" / "killed"
    teacher = TeacherSpec(name="teacher", model=str(TEACHER_DIR), vllm=SMALL_ENGINE)
    settings = SampleSettings(teachers=[teacher], num_samples=2, shard_size=4, seed=3)
    cmd = [sys.executable, "-m", "mcckd", "sample", "--out", str(out), "--settings", settings.model_dump_json()]
    # Its own process group, killed whole (as the flow does): vLLM's engine processes are its children.
    proc = subprocess.Popen(
        [*cmd, "--in", f"questions={q}"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    shards = work_dir_for(out) / "shards" / "teacher"
    deadline = time.time() + 300
    while not (lock_holder(out) and list(shards.glob("*.parquet"))):
        assert proc.poll() is None and time.time() < deadline, "the stage ended or stalled before its first shard"
        time.sleep(0.05)
    assert lock_holder(out)["pid"] == proc.pid
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()

    started = time.monotonic()
    with stage_lock(out) as waited:
        took = time.monotonic() - started
    assert waited < 0.2
    started = time.monotonic()
    summary = execute("sample", settings, out, {"questions": q})
    seconds = time.monotonic() - started
    print(
        f"\nsample killed holding its lock: the next run acquired it after {took * 1000:.1f} ms "
        f"and completed in {seconds:.1f} s, resuming {summary['shards_resumed']} of {summary['shards']} shards"
    )
    assert "reused_after_wait_s" not in summary
    assert 1 <= summary["shards_resumed"] < summary["shards"] == 6
    assert not work_dir_for(out).exists()
