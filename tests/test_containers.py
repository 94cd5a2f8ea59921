"""``docker-compose.yml`` and ``containers/`` checked statically: no image can be built here (no
registry is reachable), so this is what can be known without Docker. The files it references exist,
every credential comes from the env file, the workers' pools are ``prefect.yaml``'s, the GPU is
reserved where the accelerator stages run, and every command the containers run exists.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from mcckd.paths import PROJECT_ROOT
from mcckd.stages import STAGES

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SECRET = re.compile(r"PASSWORD|AUTH|KEY|SECRET|CONNECTION_URL", re.I)


def command_of(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return cmd if isinstance(cmd, list) else cmd.split()


def test_services_of_the_team_shape():
    assert {"postgres", "prefect-server", "cpu-worker", "gpu-worker", "vllm-teacher"} <= set(SERVICES)
    server = SERVICES["prefect-server"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "PREFECT_SERVER_API_AUTH_STRING" in server["environment"]  # authentication on


def test_every_credential_comes_from_the_uncommitted_env_file():
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    for name, service in SERVICES.items():
        env = service.get("environment", {})
        for key, value in env.items():
            if SECRET.search(key):
                assert "${" in str(value), f"{name}: {key} is written in the file"
        if "PREFECT_API_URL" in env:
            assert "PREFECT_API_AUTH_STRING" in env, f"{name} talks to the server without credentials"
    used = set(re.findall(r"\$\{(\w+)", text))
    example = {line.split("=")[0] for line in (PROJECT_ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert used <= example, f"variables missing from .env.example: {used - example}"
    for line in (PROJECT_ROOT / ".env.example").read_text().splitlines():
        if SECRET.search(line.split("=")[0]) and "=" in line:
            assert line.split("=", 1)[1] == "", f".env.example holds a value for {line.split('=')[0]}"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=PROJECT_ROOT)
    assert ignored.returncode == 0, ".env must be git-ignored"


def test_worker_pools_are_prefect_yaml_pools_and_the_gpu_is_reserved():
    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments}
    workers = {}
    for name, service in SERVICES.items():
        cmd = command_of(service)
        if cmd[:3] == ["prefect", "worker", "start"]:
            workers[name] = cmd[cmd.index("--pool") + 1]
    # `deploy --all` fails on a pool that does not exist: the Kubernetes and Slurm recipes deploy from
    # their own files (tests/test_cluster_recipes.py).
    assert set(workers.values()) == pools == {"cpu", "gpu"}
    deploy = " ".join(command_of(SERVICES["deploy"]))
    assert all(f"work-pool create {pool}" in deploy for pool in pools) and "deploy --all" in deploy
    gpu = [n for n, pool in workers.items() if pool == "gpu"]
    for name, service in SERVICES.items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        reserved = any("gpu" in d.get("capabilities", []) for d in devices)
        assert reserved == (name in gpu or name in {"train", "vllm-teacher", "ray-worker"}), name
    # The stage deployments send accelerator stages to the GPU pool, the rest to the CPU pool.
    by_name = {d["name"]: d["work_pool"]["name"] for d in deployments}
    assert by_name["stage-gpu"] == "gpu" and by_name["stage-cpu"] == "cpu"


def test_images_and_their_files_exist():
    files = {service["build"]["dockerfile"] for service in SERVICES.values() if "build" in service}
    assert files == {"containers/slim.Dockerfile", "containers/vllm.Dockerfile", "containers/train.Dockerfile"}
    for dockerfile in files:
        text = (PROJECT_ROOT / dockerfile).read_text()
        for line in text.splitlines():
            if line.startswith("COPY ") and not line.startswith("COPY . "):
                for source in line.split()[1:-1]:
                    assert (PROJECT_ROOT / source).exists(), f"{dockerfile}: {source} does not exist"
            if line.startswith("CMD "):
                cmd = json.loads(line.removeprefix("CMD "))  # the exec (JSON array) form
                assert cmd[:3] == ["python", "-m", "mcckd"] and cmd[3] in STAGES, f"{dockerfile}: {cmd}"
    images = {service["image"] for service in SERVICES.values() if "build" in service}
    for name, service in SERVICES.items():
        if service["image"].startswith("mcckd-"):
            assert service["image"] in images, f"{name} uses an image nothing builds"


def test_pinned_container_requirements_agree_with_the_lock():
    lock = dict(line.split("==") for line in (PROJECT_ROOT / "requirements/cpu.lock").read_text().split())
    lock = {k.lower(): v for k, v in lock.items()}
    for name in ("requirements-slim.txt", "requirements-train.txt"):
        for line in (PROJECT_ROOT / "containers" / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if "==" in line:
                package, version = line.split("==")
                package = package.split("[")[0].lower()
                assert lock.get(package) == version, f"{name}: {package}=={version}, the lock has {lock.get(package)}"


def test_every_command_the_containers_run_exists():
    for name, service in SERVICES.items():
        cmd = command_of(service)
        if cmd[:3] == ["python", "-m", "mcckd"]:
            assert cmd[3] in STAGES, name
        elif cmd[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]:
            import importlib.util

            spec = importlib.util.find_spec("vllm")
            assert (Path(spec.origin).parent / "entrypoints/openai/api_server.py").is_file()
    for args in (["server", "start"], ["worker", "start"], ["work-pool", "create"], ["deploy"]):
        done = subprocess.run([sys.executable, "-m", "prefect", *args, "--help"], capture_output=True, text=True)
        assert done.returncode == 0, (args, done.stderr[-500:])


def test_the_slim_image_runs_the_flows_and_cheap_stages_without_torch_or_vllm():
    """What the slim image leaves out must not be imported by the flows or by the CPU stages."""
    code = """
import sys
BLOCKED = {"torch", "vllm", "transformers", "accelerate", "peft", "datasets", "tokenizers"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is not in the slim image")
sys.meta_path.insert(0, Block())
import flows.distill, flows.stage, flows.redistill, flows.demo, flows.ui, flows.sweep, flows.real
from mcckd.stages import STAGES  # every stage's declaration and module: none may load torch at import
assert len(STAGES) == 11, STAGES
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
