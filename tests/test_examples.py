"""The example configurations under ``examples/`` are what ``python -m flows.distill --config`` reads:
each must validate as a DistillConfig, and the files it names (relative to the repository root,
where the README runs it from) must be there."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import DistillConfig
from mcckd.paths import PROJECT_ROOT

EXAMPLES = sorted((PROJECT_ROOT / "examples").glob("*.json"))
SHARED = (PROJECT_ROOT / ".." / "shared").resolve()


def test_there_are_example_configurations():
    assert EXAMPLES, f"no examples/*.json under {PROJECT_ROOT}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_an_example_validates_and_names_existing_files(path: Path, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    config = DistillConfig.model_validate_json(path.read_text())
    assert config.students and config.baseline_method in config.students
    named = [config.train_questions, config.recorded, *config.test_sets.values()]
    files = [p if p.is_absolute() else PROJECT_ROOT / p for p in named if p is not None]
    assert files, f"{path.name} names no questions, rationales or test sets"
    missing = [p for p in files if not p.exists()]
    if missing and not SHARED.is_dir() and all(p.resolve().is_relative_to(SHARED) for p in missing):
        pytest.skip(f"{path.name} reads the shared data folder {SHARED}, which is absent")
    assert not missing, f"{path.name} names files that do not exist: {[str(p) for p in missing]}"
