"""Where the demo world's committed models live (``python -m mcckd.demo_world.build`` writes them)."""

from mcckd.paths import ASSETS_DIR

DEMO_DIR = ASSETS_DIR / "demo"
TOKENIZER_DIR = DEMO_DIR / "tokenizer"
TEACHER_DIR = DEMO_DIR / "teacher"
STUDENT_BASE_DIR = DEMO_DIR / "student_base"
