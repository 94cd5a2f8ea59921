"""Where the papers' real data lives: ``../shared/data`` beside the checkout, or $MCCKD_SHARED_DATA."""

from __future__ import annotations

import pytest

from mcckd.paths import SHARED_DATA

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} is absent")
