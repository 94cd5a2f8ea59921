"""``make ui``: the Prefect UI on the project's own database, and the flows served to it.

    python -m flows.ui [--port 4200]

Starts ``prefect server`` on 127.0.0.1 with the embedded runs' home (``.prefect/``, set by
``mcckd.runtime``), so every ``make demo`` run shows there, then serves the ``demo``, ``distill``,
``sweep`` and ``demo-sweep`` flows as deployments from this process: a run started from the UI
("Run" on a deployment, with its parameters in a form) executes here, with the same stage store
(``runs/store``) and caches as the command line. Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request

from mcckd.runtime import configure_local_runtime


def wait_healthy(api_url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    """Block until the server answers its health check (or fail with the server's exit code)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"prefect server exited with {server.returncode}; is port already in use?")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"prefect server did not answer {api_url}/health within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=4200)
    args = parser.parse_args()
    configure_local_runtime()
    api_url = f"http://127.0.0.1:{args.port}/api"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(args.port)]
    server = subprocess.Popen(command, env=os.environ | {"PREFECT_API_URL": "", "PREFECT_UI_API_URL": api_url})
    try:
        wait_healthy(api_url, server)
        os.environ["PREFECT_API_URL"] = api_url  # before Prefect's settings are first read below
        from prefect import serve

        from flows.demo import demo, demo_sweep
        from flows.distill import distill
        from flows.sweep import cot_sweep

        print(f"Prefect UI: http://127.0.0.1:{args.port}  (database: {os.environ['PREFECT_HOME']})", flush=True)
        deployments = [
            demo.to_deployment(name="demo"),
            distill.to_deployment(name="distill"),
            cot_sweep.to_deployment(name="sweep"),
            demo_sweep.to_deployment(name="demo-sweep"),
        ]
        serve(*deployments, print_starting_message=False)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
