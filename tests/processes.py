"""Waiting on a stage run in a child process, for the tests that kill it mid-way."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def start(cmd: list[str], log: Path, stdout: int = subprocess.DEVNULL) -> subprocess.Popen:
    """``cmd`` in its own session (killed as a group), its stderr kept in ``log`` for the failure message."""
    with log.open("wb") as err:
        return subprocess.Popen(cmd, stdout=stdout, stderr=err, start_new_session=True)


def wait_while_running(proc: subprocess.Popen, ready: Callable[[], T], what: str, timeout: float, log: Path) -> T:
    """Poll ``ready`` until it returns something truthy, and return it; fail if ``proc`` ends or
    ``timeout`` seconds pass first (the moment to kill has then been missed), with the end of its ``log``."""
    deadline = time.time() + timeout
    while not (found := ready()):
        if proc.poll() is not None or time.time() > deadline:
            ended = f"exited {proc.returncode}" if proc.returncode is not None else f"still running after {timeout} s"
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"sampling {ended} before {what}; its stderr ends:\n{tail}")
        time.sleep(0.05)
    return found
