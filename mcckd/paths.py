"""Where the project keeps its files: one place, so nothing else hard-codes a path."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = PROJECT_ROOT / "assets"
PROMPTS_DIR = PROJECT_ROOT / "prompts"
# The papers' data (../shared/data beside the checkout, or $MCCKD_SHARED_DATA): read in place, never copied.
SHARED_DATA = Path(os.environ.get("MCCKD_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
