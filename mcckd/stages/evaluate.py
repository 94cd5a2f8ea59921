"""Stage 6, evaluate: the model answers every named test set; greedy by default, self-consistency
(majority vote over ``samples`` sampled answers) as an option.

In: a model source (:mod:`mcckd.models`) and one test set per name (``--in NAME=PATH``), in any
format :mod:`mcckd.readers` reads (GSM8K jsonl, the MCC-KD JSON files, JSONL/Parquet with field
names given, a ``datasets`` folder). The model is asked as it was trained (:mod:`mcckd.rendering`:
its chat template, or the plain prompt file), with the prompt's token ids. Out (``STAGE.outputs``):
the predictions (one row per question: every generation, the voted answer, whether it is correct,
whether there was an answer at all) and the accuracy per set. Accuracy is
over all questions of a set: an unanswered question counts as wrong, and the summary reports the
unanswered share next to it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pydantic import Field
from tqdm.auto import tqdm

from data_schemas import PREDICTIONS, InputError
from mcckd import readers
from mcckd.answers import answer_kind, answers_match, extract_answer
from mcckd.generation import VllmSettings, open_llm
from mcckd.rendering import ChatSettings, Renderer
from mcckd.settings import Settings
from mcckd.stages.spec import Output, StageSpec


class EvaluateSettings(Settings):
    model: Path = Field(description="the model folder (or a GGUF file / named source) to evaluate")
    model_name: str = Field(description="the model's name in the predictions and the report")
    template: str = Field("student", description="the plain prompt file, for models without a chat template")
    cot_format: str = Field("any", description="fills {style} in templates that have it (the demo teacher's)")
    chat: ChatSettings = Field(ChatSettings(), description="models with a chat template: as the student was trained")
    fields: dict[str, dict[str, str]] = Field(
        {}, description="test set name -> {our field (question, answer, id): the file's column}"
    )
    max_questions: int | None = Field(None, ge=1, description="only the first N questions of each test set")
    max_tokens: int = Field(192, ge=1, description="longest answer generated")
    samples: int = Field(1, ge=1, description="1 = greedy; n > 1 = self-consistency, majority vote over n samples")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of self-consistency (unused when greedy)")
    seed: int = Field(0, ge=0, description="the engine's and self-consistency sampling's seed")
    vllm: VllmSettings = Field(VllmSettings(), description="the evaluation engine (KV cache, dtype, parallelism)")


STAGE = StageSpec(
    name="evaluate",
    settings=EvaluateSettings,
    version=5,
    inputs=(),
    test_sets=True,
    outputs={
        "accuracy": Output("accuracy.json", description="{test set: accuracy}"),
        "predictions": Output("predictions.parquet", PREDICTIONS, "one row per question: generations, answer, correct"),
    },
    uses_accelerator=True,
    retries=1,
)


def read_questions(path: Path, fields: dict[str, str] | None = None) -> list[dict]:
    """A test set as ``QUESTIONS`` rows, from any of the formats the module docstring lists; ``fields``
    maps our names (question, answer, id) to the file's columns. See :func:`mcckd.readers.read_questions`."""
    return readers.read_questions(path, fields)


def vote(answers: list[str | None]) -> tuple[str | None, int]:
    """The most frequent answer among the answered samples (first seen wins a tie) and its votes."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return winner, best


def run(settings: EvaluateSettings, out_dir: Path, **test_sets: Path) -> dict:
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from mcckd.models import resolve_model

    if not test_sets:
        raise InputError("evaluate needs at least one test set, e.g. --in id=questions.parquet")
    sets = {
        name: read_questions(Path(path), settings.fields.get(name))[: settings.max_questions]
        for name, path in sorted(test_sets.items())
    }
    model_dir = resolve_model(settings.model)
    renderer = Renderer(AutoTokenizer.from_pretrained(str(model_dir)), settings.template, settings.chat, str(model_dir))
    decoding = {"max_tokens": settings.max_tokens, "stop_token_ids": renderer.stop_token_ids}
    if settings.samples == 1:
        params = SamplingParams(temperature=0.0, **decoding)
    else:
        params = SamplingParams(n=settings.samples, temperature=settings.temperature, seed=settings.seed, **decoding)
    with open_llm(model_dir, settings.vllm, seed=settings.seed) as llm:
        rows, accuracy, unanswered = [], {}, {}
        for name, questions in tqdm(sets.items(), desc=f"evaluate {settings.model_name}", unit="set"):
            # Token ids, not text: exactly the prompt tokens the student was trained on.
            prompts = [{"prompt_token_ids": renderer.prompt_ids(q["question"], settings.cot_format)} for q in questions]
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
    STAGE.write(out_dir, "predictions", rows)
    STAGE.path(out_dir, "accuracy").write_text(json.dumps(accuracy, indent=2))
    return {
        "chat_template": renderer.chat,
        "accuracy": accuracy,
        "unanswered": unanswered,
        "questions": {name: len(q) for name, q in sets.items()},
        "samples": settings.samples,
    }
