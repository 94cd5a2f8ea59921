"""Keep every cache and database inside the project folder, and everything offline.

Called before Prefect, transformers or vLLM are imported (``flows/__init__.py``,
``tasks/__init__.py``, the tests' conftest): they read these variables at import time. Values
already set in the environment win, so a deployment can point Prefect at a real server.
"""

from __future__ import annotations

import os
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
