"""Stage 6, evaluate: the model answers each test split with greedy vLLM decoding.

In: a model folder and one questions Parquet per split. Out: ``predictions.parquet`` (every
generation, its extracted answer and whether it is correct) and ``accuracy.json`` ({split: acc}).
Accuracy is over all questions of a split: an unanswered question counts as wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel
from tqdm.auto import tqdm

from data_schemas import PREDICTIONS, QUESTIONS, read_table, write_table
from mcckd.answers import answer_kind, answers_match, extract_answer
from mcckd.generation import VllmSettings, open_llm
from mcckd.prompts import load_prompt, render

STAGE_VERSION = 3


class EvaluateSettings(BaseModel):
    model: Path
    model_name: str
    template: str = "student"
    cot_format: str = "any"  # fills {style} in templates that have it (the demo teacher's)
    max_tokens: int = 192
    vllm: VllmSettings = VllmSettings()


def run(settings: EvaluateSettings, out_dir: Path, **test_sets: Path) -> dict:
    from vllm import SamplingParams

    if not test_sets:
        raise ValueError("evaluate needs at least one test split, e.g. --id questions.parquet")
    template = load_prompt(settings.template)
    llm = open_llm(settings.model, settings.vllm)
    greedy = SamplingParams(temperature=0.0, max_tokens=settings.max_tokens)
    rows, accuracy = [], {}
    for split, path in tqdm(sorted(test_sets.items()), desc=f"evaluate {settings.model_name}", unit="split"):
        questions = read_table(Path(path), QUESTIONS).to_pylist()
        prompts = [render(template, q["question"], settings.cot_format) for q in questions]
        outputs = llm.generate(prompts, greedy, use_tqdm=False)
        correct = 0
        for q, out in zip(questions, outputs, strict=True):
            text = out.outputs[0].text.strip()
            kind = answer_kind(q["answer"])
            predicted = extract_answer(text, kind, q["question"]) if kind else None
            ok = answers_match(predicted, q["answer"], kind)
            correct += ok
            rows.append(
                {
                    "model": settings.model_name,
                    "split": split,
                    **q,
                    "generation": text,
                    "predicted_answer": predicted,
                    "correct": ok,
                    "finish_reason": out.outputs[0].finish_reason or "unknown",
                }
            )
        accuracy[split] = correct / len(questions) if questions else 0.0
    write_table(rows, out_dir / "predictions.parquet", PREDICTIONS)
    (out_dir / "accuracy.json").write_text(json.dumps(accuracy, indent=2))
    return {"accuracy": accuracy}
