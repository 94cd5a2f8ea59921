"""Stage 6, evaluate: the model answers every named test set; greedy by default, self-consistency
(majority vote over ``samples`` sampled answers) as an option.

In: a model folder and one test set per name (``--in NAME=PATH``): Parquet with the ``QUESTIONS``
schema, or JSON, JSONL, Parquet with the import stage's field names (``instruction``/``question``,
``label``/``answer``, optional ``id``), or a local ``datasets`` folder (``save_to_disk``). Out:
``predictions.parquet`` (one row per question: every generation, the voted answer, whether it is
correct, whether there was an answer at all) and ``accuracy.json`` ({set: accuracy}). Accuracy is
over all questions of a set: an unanswered question counts as wrong, and the summary reports the
unanswered share next to it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from data_schemas import PREDICTIONS, InputError, write_table
from mcckd.answers import answer_kind, answers_match, extract_answer
from mcckd.generation import VllmSettings, open_llm
from mcckd.prompts import load_prompt, render
from mcckd.stages.import_recorded import RecordedDataError, field_value, read_records

STAGE_VERSION = 4


class EvaluateSettings(BaseModel):
    model: Path
    model_name: str
    template: str = "student"
    cot_format: str = "any"  # fills {style} in templates that have it (the demo teacher's)
    max_tokens: int = 192
    samples: int = Field(1, ge=1, description="1 = greedy; n > 1 = self-consistency, majority vote over n samples")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of self-consistency (unused when greedy)")
    seed: int = 0
    vllm: VllmSettings = VllmSettings()


def read_questions(path: Path) -> list[dict]:
    """A test set as ``QUESTIONS`` rows, from any of the formats the module docstring lists."""
    if path.is_dir():
        from datasets import load_from_disk

        try:
            records = load_from_disk(str(path)).to_list()
        except (FileNotFoundError, ValueError) as e:
            raise InputError(f"{path}: not a datasets folder saved with save_to_disk ({e})") from e
    else:
        records = read_records(path)
    rows, seen = [], set()
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise RecordedDataError(f"{path}: row {i}: expected an object, got {type(record).__name__}")
        question = field_value(path, i, record, "question", required=True)
        answer = field_value(path, i, record, "answer", required=True)
        if not isinstance(question, str) or not question.strip():
            raise RecordedDataError(f"{path}: row {i}: field 'question' must be non-empty text")
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise RecordedDataError(f"{path}: row {i}: field 'answer' must be text or a number, got {answer!r}")
        qid = str(record.get("id", record.get("question_id", f"{path.stem}-{i}")))
        if qid in seen:
            raise RecordedDataError(f"{path}: row {i}: field 'id': {qid!r} appears twice")
        seen.add(qid)
        rows.append({"question_id": qid, "question": question.strip(), "answer": str(answer).strip()})
    return rows


def vote(answers: list[str | None]) -> tuple[str | None, int]:
    """The most frequent answer among the answered samples (first seen wins a tie) and its votes."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return winner, best


def run(settings: EvaluateSettings, out_dir: Path, **test_sets: Path) -> dict:
    from vllm import SamplingParams

    if not test_sets:
        raise InputError("evaluate needs at least one test set, e.g. --in id=questions.parquet")
    sets = {name: read_questions(Path(path)) for name, path in sorted(test_sets.items())}
    template = load_prompt(settings.template)
    with open_llm(settings.model, settings.vllm, seed=settings.seed) as llm:
        if settings.samples == 1:
            params = SamplingParams(temperature=0.0, max_tokens=settings.max_tokens)
        else:
            params = SamplingParams(
                n=settings.samples, temperature=settings.temperature, max_tokens=settings.max_tokens, seed=settings.seed
            )
        rows, accuracy, unanswered = [], {}, {}
        for name, questions in tqdm(sets.items(), desc=f"evaluate {settings.model_name}", unit="set"):
            prompts = [render(template, q["question"], settings.cot_format) for q in questions]
            outputs = llm.generate(prompts, params, use_tqdm=False) if prompts else []
            mine = []
            for q, out in zip(questions, outputs, strict=True):
                kind = answer_kind(q["answer"])
                texts = [c.text.strip() for c in out.outputs]
                predicted, votes = vote([extract_answer(t, kind, q["question"]) if kind else None for t in texts])
                mine.append(
                    {
                        "model": settings.model_name,
                        "split": name,
                        **q,
                        "generation": texts[0],
                        "generations": texts,
                        "predicted_answer": predicted,
                        "votes": votes,
                        "answered": predicted is not None,
                        "correct": answers_match(predicted, q["answer"], kind),
                        "finish_reason": out.outputs[0].finish_reason or "unknown",
                    }
                )
            rows += mine
            accuracy[name] = sum(r["correct"] for r in mine) / len(mine) if mine else 0.0
            unanswered[name] = sum(not r["answered"] for r in mine) / len(mine) if mine else 0.0
    write_table(rows, out_dir / "predictions.parquet", PREDICTIONS)
    (out_dir / "accuracy.json").write_text(json.dumps(accuracy, indent=2))
    return {
        "accuracy": accuracy,
        "unanswered": unanswered,
        "questions": {name: len(q) for name, q in sets.items()},
        "samples": settings.samples,
    }
