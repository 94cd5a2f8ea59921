"""Where the project keeps its files: one place, so nothing else hard-codes a path."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = PROJECT_ROOT / "assets"
PROMPTS_DIR = PROJECT_ROOT / "prompts"
