"""Test session set-up: keep Prefect's database and results out of the project's own."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_PREFECT_DIR = Path(tempfile.mkdtemp(prefix="mcckd-test-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_DIR)
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_PREFECT_DIR / "storage")

from mcckd.runtime import configure_local_runtime  # noqa: E402  (after the overrides above)

configure_local_runtime()


@pytest.fixture(scope="session")
def demo_tokenizer():
    from transformers import AutoTokenizer

    from mcckd.demo_world.assets import TOKENIZER_DIR

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (starting one costs ~10 s, and several
    times that on a loaded machine: the harness's default of 30 s has timed out there)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
