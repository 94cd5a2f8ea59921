"""Where the papers' real data lives: ``../shared/data`` beside the checkout, or $MCCKD_SHARED_DATA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("MCCKD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} is absent")
