"""``make ui``: a real Prefect server on the given home's database, with the flows served to it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow  # starts a Prefect server (flows.ui) in its own process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> list | dict | int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_ui_serves_demo_and_distill_on_the_projects_database(tmp_path):
    port = free_port()
    home = tmp_path / "prefect-home"
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_API_URL": ""}
    ui = subprocess.Popen(
        [sys.executable, "-m", "flows.ui", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline, names = time.time() + 180, []
        while time.time() < deadline and sorted(names) != ["demo", "demo-sweep", "distill", "sweep"]:
            assert ui.poll() is None, ui.stdout.read()
            with contextlib.suppress(OSError):
                names = [d["name"] for d in post(f"{api}/deployments/filter", {})]
            time.sleep(1)
        assert sorted(names) == ["demo", "demo-sweep", "distill", "sweep"]
        assert (home / "prefect.db").is_file()  # the server's database is the given home's
        flows = {f["name"] for f in post(f"{api}/flows/filter", {})}
        assert flows == {"demo", "demo-sweep", "distill", "sweep"}
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
