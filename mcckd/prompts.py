"""Prompt templates are data: files in ``prompts/``, filled with the question and the CoT style."""

from __future__ import annotations

from mcckd.paths import PROMPTS_DIR


def load_prompt(name: str) -> str:
    """The template ``prompts/NAME.txt``."""
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))
        raise FileNotFoundError(f"no prompt template {path}; known templates: {known}")
    return path.read_text()


def style_slot(cot_format: str, granularity: str) -> str:
    """What fills a template's ``{style}``: ``any``, or ``<format> <granularity>`` (arXiv 2502.18001)."""
    return "any" if cot_format == "any" else f"{cot_format} {granularity}"


def render(template: str, question: str, cot_format: str = "any", granularity: str = "any") -> str:
    return template.format(question=question.strip(), style=style_slot(cot_format, granularity))
