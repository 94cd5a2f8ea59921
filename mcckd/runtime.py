"""Keep every cache and database inside the project folder, and everything offline.

Called before Prefect, transformers or vLLM are imported (``flows/__init__.py``,
``tasks/__init__.py``, the tests' conftest): they read these variables at import time. Values
already set in the environment win, so a deployment can point Prefect at a real server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mcckd.paths import PROJECT_ROOT


def configure_local_runtime(root: Path = PROJECT_ROOT) -> None:
    cache = root / ".cache"
    prefect_home = Path(os.environ.get("PREFECT_HOME", root / ".prefect"))  # a test's or deployment's wins
    defaults = {
        "PREFECT_HOME": prefect_home,
        "PREFECT_LOCAL_STORAGE_PATH": prefect_home / "storage",
        # Prefect 3.6 derives this one from ~/.prefect whatever PREFECT_HOME says, and warns when
        # that folder is missing.
        "PREFECT_SERVER_MEMO_STORE_PATH": prefect_home / "memo_store.toml",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "XDG_CACHE_HOME": cache,
        "XDG_CONFIG_HOME": cache / "config",
        "HF_HOME": cache / "huggingface",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "VLLM_CACHE_ROOT": cache / "vllm",
        "VLLM_CONFIG_ROOT": cache / "vllm-config",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "TORCHINDUCTOR_CACHE_DIR": cache / "inductor",
        "TRITON_CACHE_DIR": cache / "triton",
        "NUMBA_CACHE_DIR": cache / "numba",
        "MPLCONFIGDIR": cache / "matplotlib",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, str(value))


# mimalloc, kept from returning freed pages to the kernel: a training step frees and reallocates
# the same large buffers (activations, the loss's logits chunks, autocast's weight copies) every
# step, and glibc's malloc maps and unmaps each one above 32 MiB, so every step pays its page faults
# again (a quarter of the CPU time in the kernel here). benchmarks/training_scale.py measures it.
MIMALLOC = ("cmeel-mimalloc", "cmeel.prefix/lib/libmimalloc.so.3")
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ARENA_EAGER_COMMIT": "1"}


def caching_allocator() -> Path | None:
    """The mimalloc library of the installed ``cmeel-mimalloc`` wheel (Linux), or None."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(distribution(MIMALLOC[0]).locate_file(MIMALLOC[1]))
    except PackageNotFoundError:
        return None
    return path if sys.platform == "linux" and path.is_file() else None


def allocator_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with mimalloc preloaded, unless ``MCCKD_ALLOCATOR=system``
    or it is not installed; a preload already there is kept after it."""
    env = dict(os.environ if env is None else env)
    library = caching_allocator()
    if env.get("MCCKD_ALLOCATOR") == "system" or library is None or str(library) in env.get("LD_PRELOAD", ""):
        return env
    preload = ":".join(p for p in (str(library), env.get("LD_PRELOAD", "")) if p)
    return {**MIMALLOC_SETTINGS, **env, "LD_PRELOAD": preload}


def reexec_with_caching_allocator(argv: list[str]) -> None:
    """Restart this Python process as ``python ARGV`` under :func:`allocator_env`, once: a preload
    takes effect only when a process starts. Returns (doing nothing) when no change is needed."""
    env = allocator_env()
    if env.get("LD_PRELOAD") != os.environ.get("LD_PRELOAD"):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *argv], env)


def allocator_in_use() -> str:
    """``mimalloc`` when this process runs under it (read from its memory map), else ``system``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "mimalloc" if "libmimalloc" in maps else "system"
