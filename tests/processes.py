"""Waiting on a stage run in a child process, for the tests that kill it mid-way."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_while_running(proc: subprocess.Popen, ready: Callable[[], T], what: str, timeout: float) -> T:
    """Poll ``ready`` until it returns something truthy, and return it; fail if ``proc`` ends or
    ``timeout`` seconds pass first (the moment to kill has then been missed)."""
    deadline = time.time() + timeout
    while not (found := ready()):
        assert proc.poll() is None and time.time() < deadline, f"sampling ended or stalled before {what}"
        time.sleep(0.05)
    return found
