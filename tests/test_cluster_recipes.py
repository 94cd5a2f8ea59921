"""The three cluster recipes (containers/README.md) parsed and checked against the settings they
name: docker compose's Ray profile, KubeRay with a Kubernetes work pool, and the Slurm batch script.

No cluster can be started here (no registry, no Kubernetes, no Slurm): what is checked is that each
file parses, that the names one file uses are the names another defines (services, claims, secrets,
pools, ports, mount paths), and that each recipe's example settings are valid stage settings that
fit the cluster it describes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import ray
import yaml

from mcckd.paths import PROJECT_ROOT
from mcckd.stages.sample import SampleSettings
from mcckd.stages.train import TrainSettings

CONTAINERS = PROJECT_ROOT / "containers"
COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]
PREFECT_FILES = (PROJECT_ROOT / "prefect.yaml", *(CONTAINERS / setup / "prefect.yaml" for setup in ("k8s", "slurm")))
DEPLOYMENTS = {d["name"]: d for path in PREFECT_FILES for d in yaml.safe_load(path.read_text())["deployments"]}
TEACHER = {"name": "t", "model": "/models/teacher"}


def recipe_settings(folder: str) -> tuple[SampleSettings, TrainSettings]:
    """The recipe's sample and train settings, validated by the stages' own models."""
    raw = json.loads((CONTAINERS / folder / "settings.json").read_text())
    sample = SampleSettings.model_validate({"teachers": [TEACHER], **raw["sample"]})
    train = TrainSettings.model_validate({"base_model": "/models/student", **raw["train"]})
    assert sample.backend == "ray" and train.nodes > 1
    return sample, train


def flag(args: list[str], name: str) -> str:
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def test_compose_ray_profile_is_a_head_and_one_worker_the_stage_ray_deployment_reaches():
    head, worker = COMPOSE["ray-head"], COMPOSE["ray-worker"]
    assert head["profiles"] == worker["profiles"] == ["ray"]
    assert head["image"] == worker["image"] == COMPOSE["gpu-worker"]["image"] == "mcckd-vllm"
    assert head["command"][:3] == ["ray", "start", "--head"] and "--block" in head["command"]
    port, client_port = flag(head["command"], "port"), flag(head["command"], "ray-client-server-port")
    assert flag(worker["command"], "address") == f"ray-head:{port}" and "--block" in worker["command"]
    # Shard files and checkpoints land where the stage runs read them: one volume, one path.
    mounts = {tuple(s["volumes"]) for s in (head, worker, COMPOSE["gpu-worker"])}
    assert mounts == {("runs:/app/runs",)}
    deployment = DEPLOYMENTS["stage-ray"]
    assert deployment["work_pool"]["name"] == "gpu" and deployment["entrypoint"] == "flows/stage.py:stage"
    assert deployment["work_pool"]["job_variables"]["env"]["RAY_ADDRESS"] == f"ray://ray-head:{client_port}"
    tokens = {s["environment"]["RAY_AUTH_TOKEN"] for s in (head, worker, COMPOSE["gpu-worker"])}
    assert tokens == {"${RAY_AUTH_TOKEN:?set in .env}"}  # the cluster's token, from the uncommitted .env


def test_kuberay_cluster_pool_and_deployment_name_the_same_things():
    docs = list(yaml.safe_load_all((CONTAINERS / "k8s" / "raycluster.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    claim, cluster = kinds["PersistentVolumeClaim"], kinds["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and claim["spec"]["accessModes"] == ["ReadWriteMany"]

    assert cluster["spec"]["rayVersion"] == ray.__version__  # the cluster runs the Ray the clients pin
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    [workers] = cluster["spec"]["workerGroupSpecs"]
    pods = [head, workers["template"]["spec"]]
    for pod in pods:
        [container] = pod["containers"]
        assert container["image"] == "mcckd-vllm"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert {"name": "runs", "mountPath": "/app/runs"} in container["volumeMounts"]
        assert container["envFrom"] == [{"secretRef": {"name": "mcckd-ray-auth"}}]
    [container] = head["containers"]
    client_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "client")

    pool = json.loads((CONTAINERS / "k8s" / "work-pool.json").read_text())
    job = pool["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    [job_container] = job["containers"]
    assert job_container["envFrom"] == [{"secretRef": {"name": "mcckd-ray-auth"}}]
    assert {"name": "runs", "mountPath": "/app/runs"} in job_container["volumeMounts"]
    assert job["volumes"] == [{"name": "runs", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}]
    # Every {{ placeholder }} of the job manifest is a variable the pool declares.
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(pool["job_configuration"])))
    assert used <= set(pool["variables"]["properties"]), used - set(pool["variables"]["properties"])
    address = f"ray://{cluster['metadata']['name']}-head-svc:{client_port}"  # KubeRay's head service
    assert pool["variables"]["properties"]["env"]["default"]["RAY_ADDRESS"] == address
    deployment = DEPLOYMENTS["stage-k8s"]
    assert (
        deployment["work_pool"]["name"] == "k8s" and deployment["work_pool"]["job_variables"]["image"] == "mcckd-vllm"
    )
    assert deployment["work_pool"]["job_variables"]["env"]["RAY_ADDRESS"] == address

    sample, train = recipe_settings("k8s")
    gpus = workers["replicas"] * int(workers["rayStartParams"]["num-gpus"])
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert sample.ray.replicas * sample.ray.gpus_per_replica <= gpus
    assert train.nodes <= workers["replicas"] and train.processes <= int(workers["rayStartParams"]["num-gpus"])


def test_slurm_script_starts_ray_and_a_worker_of_the_stage_slurm_pool():
    path = CONTAINERS / "slurm" / "mcckd.sbatch"
    text = path.read_text()
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0  # it parses as bash
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    nodes, gpus, cpus = int(directives["nodes"]), int(directives["gpus-per-node"]), int(directives["cpus-per-task"])
    port = re.search(r"^RAY_PORT=(\d+)$", text, re.M).group(1)
    lines = [line for line in text.replace("\\\n", " ").splitlines() if not line.startswith("#")]
    commands = [shlex.split(line.strip().rstrip("&").strip()) for line in lines]
    ray_starts = [c[c.index("ray") :] for c in commands if "ray" in c and "start" in c]
    [head] = [c for c in ray_starts if "--head" in c]
    [worker] = [c for c in ray_starts if "--head" not in c]
    assert "--port=$RAY_PORT" in head and "--address=$head_ip:$RAY_PORT" in worker
    assert 'export RAY_ADDRESS="$head_ip:$RAY_PORT"' in text and port == "6379"
    [prefect] = [c[c.index("prefect") :] for c in commands if "prefect" in c and "worker" in c]
    pool = prefect[prefect.index("--pool") + 1]
    assert DEPLOYMENTS["stage-slurm"]["work_pool"]["name"] == pool
    sample, train = recipe_settings("slurm")
    assert sample.ray.replicas * sample.ray.gpus_per_replica <= nodes * gpus
    assert sample.ray.cpus_per_replica <= cpus and train.nodes <= nodes and train.processes <= gpus


def test_every_recipe_is_documented():
    readme = (CONTAINERS / "README.md").read_text()
    k8s = ("k8s/raycluster.yaml", "k8s/work-pool.json", "k8s/prefect.yaml")
    for path in (*k8s, "slurm/mcckd.sbatch", "slurm/prefect.yaml", "docker-compose.yml"):
        assert path in readme, path
