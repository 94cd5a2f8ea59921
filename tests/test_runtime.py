"""Training processes run under mimalloc (mcckd.runtime): a preload only a new process can take."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mcckd.runtime import allocator_env, allocator_in_use, caching_allocator

pytestmark = pytest.mark.skipif(caching_allocator() is None, reason="cmeel-mimalloc is not installed (make setup)")
SHOW = [sys.executable, "-c", "from mcckd.runtime import allocator_in_use; print(allocator_in_use())"]


def test_a_process_started_with_the_allocator_env_runs_under_mimalloc():
    assert allocator_in_use() == "system"  # the test process itself was started plainly
    env = allocator_env()
    assert env["MIMALLOC_PURGE_DELAY"] == "-1"  # freed pages stay mapped for the next step
    assert subprocess.run(SHOW, env=env, capture_output=True, text=True, check=True).stdout.strip() == "mimalloc"


def test_system_allocator_is_kept_when_asked_and_other_preloads_survive():
    plain = allocator_env({**os.environ, "MCCKD_ALLOCATOR": "system"})
    assert "LD_PRELOAD" not in plain or "mimalloc" not in plain["LD_PRELOAD"]
    assert subprocess.run(SHOW, env=plain, capture_output=True, text=True, check=True).stdout.strip() == "system"
    other = allocator_env({**os.environ, "LD_PRELOAD": "/lib/other.so"})
    assert other["LD_PRELOAD"] == f"{caching_allocator()}:/lib/other.so"
    assert allocator_env(other) == other  # already preloaded: nothing to change, so no second re-exec


@pytest.mark.slow  # python -m mcckd train
def test_the_train_command_reexecutes_itself_under_mimalloc(tmp_path):
    """``python -m mcckd train`` restarts under mimalloc before it reads anything: its log says so."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mcckd", "train", "--out", str(out), "--settings", '{"base_model": "m"}']
    command += ["--in", "trainset=/no/such.parquet"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "LD_PRELOAD": ""})
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert "stage train starts (allocator: mimalloc)" in (tmp_path / "out.log").read_text()


def test_stages_side_by_side_get_cores_of_their_own():
    """tasks.stages.CorePool: disjoint cores while held, none (no pinning) when too few are free."""
    from tasks.stages import CorePool

    pool, n = CorePool(), len(os.sched_getaffinity(0))
    with pool.take(1) as first, pool.take(n - 1) as rest:
        assert len(first) == 1 and len(rest) == n - 1 and not set(first) & set(rest)
        with pool.take(1) as none_left:
            assert none_left == []
    with pool.take(n) as everything:
        assert sorted(everything) == sorted(os.sched_getaffinity(0))
