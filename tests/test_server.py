"""The team shape on one machine: a real ``prefect server`` with API authentication on, backed by a
real PostgreSQL, the deployments of ``prefect.yaml``, and process workers on a "cpu" and a "gpu"
pool. ``distill`` runs through the API with every stage as its own flow run on the pool of its kind;
a teacher's weights change and ``redistill`` starts a distillation that recomputes only what
depends on the teacher. Nothing is mocked; the "gpu" pool's worker runs on this CPU machine (there
is no GPU here), which is the only difference from a GPU host.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mcckd.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow

AUTH = "mcckd-admin:test-secret-5f2c"
DB_PASSWORD = "pg-test-password-81ad"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*cmd: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster of its own (Debian's binaries, run as the postgres user)."""
    if shutil.which("pg_ctl") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's postgresql package and root (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="mcckd-pg-"))  # pytest's own folders are closed to other users
    data, port = root / "data", free_port()
    (root / "pw").write_text(DB_PASSWORD)
    shutil.chown(root, "postgres")
    shutil.chown(root / "pw", "postgres")
    as_postgres("initdb", "-D", str(data), "-U", "prefect", f"--pwfile={root / 'pw'}", "--auth=scram-sha-256")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    as_postgres("pg_ctl", "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start")
    env = os.environ | {"PGPASSWORD": DB_PASSWORD}
    subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "prefect",
            "-d",
            "postgres",
            "-c",
            "CREATE DATABASE prefect",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    yield f"postgresql+asyncpg://prefect:{DB_PASSWORD}@127.0.0.1:{port}/prefect"
    as_postgres("pg_ctl", "-D", str(data), "-m", "fast", "stop")
    shutil.rmtree(root, ignore_errors=True)


def request(url: str, body: dict | None = None, auth: bool = True) -> object:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(AUTH.encode()).decode()  # what Prefect's client sends
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT
    )


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """The server with authentication on, the deployments and two workers; yields (api url, client env)."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = os.environ | {"PREFECT_HOME": str(root / "home"), "PREFECT_LOCAL_STORAGE_PATH": str(root / "results")}
    server_env = base | {
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres,
        "PREFECT_SERVER_API_AUTH_STRING": AUTH,
        "PREFECT_API_URL": "",
        "PREFECT_UI_API_URL": api,  # what the UI in a browser calls
    }
    client_env = base | {
        "PREFECT_API_URL": api,
        "PREFECT_API_AUTH_STRING": AUTH,
        "MCCKD_HOME": str(PROJECT_ROOT),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    cli = [sys.executable, "-m", "prefect"]
    procs = [
        start([*cli, "server", "start", "--host", "127.0.0.1", "--port", str(port)], server_env, root / "server.log")
    ]
    try:
        deadline = time.time() + 180
        while True:
            try:
                request(f"{api}/health")
                break
            except OSError:
                assert time.time() < deadline and procs[0].poll() is None, (root / "server.log").read_text()[-3000:]
                time.sleep(1)
        for pool in ("cpu", "gpu"):
            subprocess.run([*cli, "work-pool", "create", pool, "--type", "process"], env=client_env, check=True)
        deployed = subprocess.run(
            [*cli, "--no-prompt", "deploy", "--all"], env=client_env, cwd=PROJECT_ROOT, capture_output=True, text=True
        )
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        for pool in ("cpu", "gpu"):
            worker = [*cli, "worker", "start", "--pool", pool, "--type", "process"]
            procs.append(start(worker, client_env, root / f"worker-{pool}.log"))
        yield api, client_env, root
    finally:
        for proc in reversed(procs):
            stop(proc)


def flow_runs(api: str, deployment: str) -> list[dict]:
    [dep] = [d for d in request(f"{api}/deployments/filter", {}) if f"{d['name']}" == deployment]
    return request(f"{api}/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})


def test_server_refuses_requests_without_credentials(server):
    api, _, _ = server
    with pytest.raises(urllib.error.HTTPError) as refused:
        request(f"{api}/flows/filter", {}, auth=False)
    assert refused.value.code == 401
    assert isinstance(request(f"{api}/flows/filter", {}), list)
    names = {d["name"] for d in request(f"{api}/deployments/filter", {})}
    assert names == {"distill", "demo", "sweep", "demo-sweep", "redistill", "stage-gpu", "stage-cpu", "stage-ray"} | {
        "real",
        "real-sweep",
        "real-self-distill",
    }


def run_script(env: dict, code: str, timeout: int = 900) -> dict:
    """Run ``code`` against the server in a fresh interpreter (Prefect reads its settings at import)."""
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


RUN = """
import json
from prefect.deployments import run_deployment
run = run_deployment({name!r}, parameters={{"config": json.loads({config!r})}}, timeout=None)
print(json.dumps({{"id": str(run.id), "state": run.state.name}}))
"""


def test_distill_and_redistill_through_the_api(server, tmp_path):
    from flows.config import StageDeployments
    from flows.demo import DemoSettings, demo_config, demo_questions
    from mcckd.demo_world.assets import TEACHER_DIR

    api, env, root = server
    shared = root / "shared"  # every worker sees it (one machine here; a volume in docker-compose)
    teacher = shared / "teacher"
    shutil.copytree(TEACHER_DIR, teacher)
    tiny = DemoSettings(
        train_questions=4, test_questions=2, sample={"num_samples": 2}, loop={"epochs": 1, "questions_per_batch": 4}
    )
    tiny = tiny.model_copy(update={"cot_styles": [("plain", "2")], "parallel_trains": 1})
    questions = demo_questions.fn(shared / "store", tiny.train_questions, tiny.test_questions, tiny.data_seed)
    config = demo_config(tiny, questions, shared / "store", shared / "report")
    spec = config.sample.teachers[0].model_copy(update={"model": str(teacher)})
    config = config.model_copy(
        update={
            "sample": config.sample.model_copy(update={"teachers": [spec]}),
            "stage_deployments": StageDeployments(),
            "test_sets": {"id": config.test_sets["id"]},
            # One training and no teacher scoring: each stage run is a process of its own.
            "students": {"mcc_kd": config.students["mcc_kd"]},
            "evaluate_teachers": False,
        }
    )
    payload = config.model_dump_json()

    # 1. distill through the API: every stage is a run of the stage deployment of its kind.
    first = run_script(env, RUN.format(name="distill/distill", config=payload))
    assert first["state"] == "Completed", first
    stage_pools = {}
    for deployment, pool in (("stage-gpu", "gpu"), ("stage-cpu", "cpu")):
        for run in flow_runs(api, deployment):
            assert run["work_pool_name"] == pool and run["state_name"] == "Completed"
            stage_pools.setdefault(run["name"].split("-")[0], set()).add(pool)
    assert stage_pools == {
        "sample": {"gpu"},
        "train": {"gpu"},
        "evaluate": {"gpu"},
        "judge": {"cpu"},
        "select": {"cpu"},
        "decontaminate": {"cpu"},
        "materialize": {"cpu"},
    }
    artifacts = request(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [first["id"]]}}})
    keys = {a["key"] for a in artifacts}
    assert {"sample-summary", "rejection-ledger", "accuracy", "distill-report", "plot-accuracy"} <= keys
    if os.environ.get("MCCKD_SCREENSHOT") and shutil.which("chromium"):  # for the docs: the run's artifacts
        shots = Path(os.environ["MCCKD_SCREENSHOT"])
        [report_artifact] = [a for a in artifacts if a["key"] == "distill-report"]
        pages = {
            f"/runs/flow-run/{first['id']}?tab=Artifacts": shots / "flow-run-artifacts.png",
            f"/artifacts/artifact/{report_artifact['id']}": shots / "report-artifact.png",
        }
        screenshot(api.removesuffix("/api"), pages)
    [accuracy] = [a for a in artifacts if a["key"] == "accuracy"]
    assert {row["model"] for row in json.loads(accuracy["data"])} == {"untrained", "mcc_kd"}
    before = {p.parent.name + "/" + p.name for p in (shared / "store").glob("*/*") if p.is_dir()}

    # 2. The teacher's weights change; redistill sees it against what distill recorded.
    assert json.loads((shared / "store" / "distilled_teachers.json").read_text()).keys() == {"demo-teacher"}
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(teacher / "model.safetensors")
    name = next(k for k in weights if k.endswith("norm.weight"))
    weights[name] = weights[name] * (1 + 1e-3 * torch.randn_like(weights[name]))
    save_file(weights, teacher / "model.safetensors", metadata={"format": "pt"})
    again = run_script(env, RUN.format(name="redistill/redistill", config=payload))
    assert again["state"] == "Completed"

    # The new distillation (a subflow of that redistill run) recomputed the teacher's descendants only.
    [child] = request(f"{api}/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [again["id"]]}}})
    tasks = request(f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [child["id"]]}}})
    states = {}
    for t in tasks:
        states.setdefault(t["name"].split("-")[0], []).append(t["state_name"])
    assert states["sample"] == states["judge"] == states["select"] == states["materialize"] == ["Completed"]
    assert states["train"] == ["Completed"]
    assert sorted(states["evaluate"]) == ["Cached", "Completed"]  # untrained: cached
    after = {p.parent.name + "/" + p.name for p in (shared / "store").glob("*/*") if p.is_dir()}
    assert {f.split("/")[0] for f in after - before} == {
        "sample",
        "judge",
        "select",
        "decontaminate",
        "materialize",
        "train",
        "evaluate",
    }
    events = request(f"{api}/events/filter", {"filter": {"event": {"name": ["mcckd.teacher.updated"]}}})
    [event] = events["events"]
    assert event["resource"]["prefect.resource.id"] == "mcckd.teacher.demo-teacher"

    # 3. The event starts the deployment again (its trigger) with the config it carries: that run
    # checks the same store, finds it up to date, and distils nothing (without the config it would
    # have distilled the demo).
    ended = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    deadline = time.time() + 300
    while True:
        triggered = [r for r in flow_runs(api, "redistill") if r["id"] != again["id"]]
        if triggered and triggered[0]["state_type"] in ended:
            break
        assert time.time() < deadline, f"the event's run did not end: {triggered}"
        time.sleep(2)
    [run] = triggered
    assert run["state_name"] == "Completed" and run["parameters"]["config"] == json.loads(payload)
    assert request(f"{api}/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}}) == []


# Clicks the tab with this label (the UI's tabs are <li class="p-tab">; a ?tab= in the first URL is
# reset to the default tab while the page loads).
CLICK_TAB = """[...document.querySelectorAll('li.p-tab')].find(e => e.textContent.trim() === %s)?.click()"""


def screenshot(ui: str, pages: dict[str, Path]) -> None:
    """Each UI page (path -> PNG file) from headless Chromium logged in with the API credentials
    (the UI keeps them in localStorage "prefect-password"), over the DevTools protocol."""
    import asyncio

    import websockets

    port = free_port()
    chrome = subprocess.Popen(
        ["chromium", "--headless=new", "--no-sandbox", f"--remote-debugging-port={port}", "--window-size=1600,1500"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    async def shoot() -> None:
        deadline = time.time() + 30
        while True:
            try:
                [page] = [t for t in request(f"http://127.0.0.1:{port}/json", auth=False) if t["type"] == "page"]
                break
            except (OSError, ValueError):
                assert time.time() < deadline, "chromium did not start"
                await asyncio.sleep(0.5)
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=2**26) as ws:
            ids = iter(range(1, 1000))

            async def call(method: str, **params) -> dict:
                message_id = next(ids)
                await ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
                while True:
                    reply = json.loads(await ws.recv())
                    if reply.get("id") == message_id:
                        return reply.get("result", {})

            token = base64.b64encode(AUTH.encode()).decode()
            await call("Page.navigate", url=ui)
            await asyncio.sleep(3)
            await call("Runtime.evaluate", expression=f"localStorage.setItem('prefect-password', '{token}')")
            await call(
                "Runtime.evaluate", expression="localStorage.setItem('join-the-community-modal-dismissed', 'true')"
            )
            for path, out in pages.items():
                await call("Page.navigate", url=ui + path)
                await asyncio.sleep(10)
                if "tab=" in path:  # the tab named in the URL, clicked in case the router dropped the query
                    tab = path.split("tab=")[1]
                    await call("Runtime.evaluate", expression=CLICK_TAB % json.dumps(tab))
                    await asyncio.sleep(5)
                shot = await call("Page.captureScreenshot", format="png")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(base64.b64decode(shot["data"]))

    try:
        asyncio.run(shoot())
    finally:
        stop(chrome)
