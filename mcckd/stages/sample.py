"""Stage 1, sample: the teacher writes N rationales per question (vLLM offline, seeded per question).

In: questions Parquet (``data_schemas.QUESTIONS``). Out: ``samples.parquet`` (``SAMPLES``), one row
per (question, sample index), with the teacher's identity and the sampling parameters on every row.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from tqdm.auto import tqdm

from data_schemas import QUESTIONS, SAMPLES, read_table, write_table
from mcckd.generation import VllmSettings, open_llm
from mcckd.prompts import load_prompt, render
from mcckd.store import fingerprint, path_fingerprint

STAGE_VERSION = 1


class SampleSettings(BaseModel):
    teacher: Path  # a local model folder (weights + tokenizer)
    teacher_name: str = "teacher"
    template: str = "demo_teacher"
    cot_format: str = "any"
    granularity: str = "any"
    num_samples: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 192
    seed: int = 0
    questions_per_call: int = 128  # prompts per LLM.generate call: the progress bar's granularity
    vllm: VllmSettings = VllmSettings()


def request_seed(base_seed: int, question_id: str) -> int:
    """A per-question seed: a question's samples do not depend on batching or on other questions."""
    return int(fingerprint(base_seed, question_id)[:8], 16)


def run(settings: SampleSettings, out_dir: Path, questions: Path) -> dict:
    from vllm import SamplingParams

    table = read_table(questions, QUESTIONS).to_pylist()
    template = load_prompt(settings.template)
    prompts = [render(template, q["question"], settings.cot_format, settings.granularity) for q in table]
    seeds = [request_seed(settings.seed, q["question_id"]) for q in table]
    params = [
        SamplingParams(
            n=settings.num_samples,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_tokens,
            seed=seed,
        )
        for seed in seeds
    ]
    teacher_fp = path_fingerprint(settings.teacher)
    llm = open_llm(settings.teacher, settings.vllm, settings.seed)
    rows, outputs = [], []
    step = settings.questions_per_call
    with tqdm(total=len(table), desc="sample", unit="question") as bar:
        for start in range(0, len(table), step):
            outputs += llm.generate(prompts[start : start + step], params[start : start + step], use_tqdm=False)
            bar.update(len(prompts[start : start + step]))
    for q, prompt, seed, out in zip(table, prompts, seeds, outputs, strict=True):
        for i, completion in enumerate(out.outputs):
            rows.append(
                {
                    **q,
                    "teacher": settings.teacher_name,
                    "teacher_fingerprint": teacher_fp,
                    "template": settings.template,
                    "granularity": settings.granularity,
                    "cot_format": settings.cot_format,
                    "prompt": prompt,
                    "sample_index": i,
                    "rationale": completion.text.strip(),
                    "finish_reason": completion.finish_reason or "unknown",
                    "prompt_tokens": len(out.prompt_token_ids),
                    "completion_tokens": len(completion.token_ids),
                    "temperature": settings.temperature,
                    "top_p": settings.top_p,
                    "max_tokens": settings.max_tokens,
                    "seed": seed,
                }
            )
    write_table(rows, out_dir / "samples.parquet", SAMPLES)
    return {
        "questions": len(table),
        "samples": len(rows),
        "generated_tokens": sum(r["completion_tokens"] for r in rows),
    }
