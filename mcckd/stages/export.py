"""Stage 7, export (after the chosen student's evaluation): the student as a model a user takes away.

In: the chosen model folder (``choose``'s ``model``), its checkpoint table, its test evaluation's
predictions and the training set. Out (``STAGE.outputs``): the model folder (hard links to the
chosen checkpoint's files: weights, config, tokenizer and chat template) with a model card,
``README.md`` in the Hugging Face convention: YAML front matter (base model, library, tags), then
the base model, the data and its counts, the method and its settings, the kept checkpoint, and the
evaluation table with 95% intervals. It loads with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from data_schemas import CHECKPOINTS, PREDICTIONS, TRAINSET, read_table
from mcckd.prompts import load_prompt, render
from mcckd.settings import Settings
from mcckd.stages.choose import link_model
from mcckd.stages.spec import Output, StageSpec
from mcckd.stages.train import TrainSettings
from mcckd.stats import wilson_interval


class ExportSettings(Settings):
    name: str = Field(description="the model's name on its card (e.g. smollm2-135m-svamp-mcc-kd)")
    method: str = Field(description="the method's name in the run (std_cot, mcc_kd, ...)")
    base_model_id: str = Field(description="the base model as users know it (a hub id or a name)")
    data: str = Field(description="where the rationales came from: the teacher, the questions, the source")
    train: TrainSettings = Field(description="the train stage's settings, stated on the card")


STAGE = StageSpec(
    name="export",
    settings=ExportSettings,
    version=1,
    inputs=("model", "checkpoint_scores", "predictions", "trainset"),
    outputs={"model": Output("model", description="weights, tokenizer and README.md (the model card)")},
)

CARD = "README.md"


def evaluation_rows(predictions: Path) -> list[dict]:
    table = read_table(predictions, PREDICTIONS).select(["split", "correct"]).to_pylist()
    rows = []
    for split in dict.fromkeys(r["split"] for r in table):
        correct = [r["correct"] for r in table if r["split"] == split]
        low, high = wilson_interval(sum(correct), len(correct))
        rows.append(
            {"split": split, "questions": len(correct), "accuracy": sum(correct) / len(correct), "ci": (low, high)}
        )
    return rows


def has_chat_template(model: Path) -> bool:
    config = model / "tokenizer_config.json"
    in_config = config.is_file() and "chat_template" in json.loads(config.read_text())
    return in_config or (model / "chat_template.jinja").is_file()


def usage(settings: ExportSettings, chat: bool) -> list[str]:
    """How to ask the model as it was trained: its chat template, or the plain prompt it learnt."""
    load = [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'question = "Jack had 8 pens and gave 3 away. How many are left?"',
    ]
    if chat:
        turn = settings.train.chat
        system = [{"role": "system", "content": turn.system}] if turn.system else []
        ask = f"messages = {system!r} + [{{'role': 'user', 'content': {turn.instruction!r}.format(question=question)}}]"
        return [
            *load,
            ask,
            "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')",
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=256)[0][ids.shape[1]:]))",
        ]
    prompt = render(load_prompt(settings.train.template), "{question}")
    return [
        *load,
        f"prompt = {prompt!r}.format(question=question)  # the plain prompt it was trained on",
        "ids = tokenizer(prompt, return_tensors='pt').input_ids",
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=256)[0][ids.shape[1]:]))",
    ]


def card(settings: ExportSettings, checkpoints: list[dict], evaluation: list[dict], data: dict, chat: bool) -> str:
    loop = settings.train.loop
    method = (
        f"MCC-KD: cross-entropy on every rationale plus {loop.alpha} x the bidirectional KL between the answer "
        f"distributions of a question's rationales (temperature {loop.temperature}, {loop.pair_mode} pairs)"
        if loop.uses_consistency
        else "Std-CoT: cross-entropy on every rationale"
    )
    chosen = next(r for r in checkpoints if r["chosen"])
    lines = [
        "---",
        f"base_model: {settings.base_model_id}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- mcckd",
        "- distillation",
        "- chain-of-thought",
        f"- {settings.method.replace('_', '-')}",
        "---",
        "",
        f"# {settings.name}",
        "",
        f"`{settings.base_model_id}` distilled by mcckd from teacher rationales ({settings.method}). Ask it as it "
        f"was trained ({'its chat template' if chat else 'the plain prompt below'}): it writes its reasoning, then "
        "its answer.",
        "",
        "## Data",
        "",
        f"{settings.data}. After judging, selection and decontamination: {data['rationales']:,} rationales of "
        f"{data['questions']:,} questions (at most {data['max_per_question']} a question).",
        "",
        "## Training",
        "",
        f"{method}. Full fine-tuning" + (" with LoRA (merged)" if loop.lora else "") + ".",
        "",
        "| setting | value |",
        "|---|---|",
        *(
            f"| {k} | {v} |"
            for k, v in {
                "epochs": loop.epochs,
                "learning rate": f"{loop.learning_rate:g} (AdamW, cosine, {loop.warmup_ratio:g} warm-up)",
                "questions per batch": loop.questions_per_batch,
                "alpha": loop.alpha,
                "max length": loop.max_length,
                "precision": loop.precision,
                "seed": loop.seed,
            }.items()
        ),
        "",
        "## Checkpoint selection",
        "",
        f"Saved after every epoch and scored by greedy generation on {chosen['questions']} held-out validation "
        f"questions (never trained on); kept: **{chosen['checkpoint']}** (ties go to the earliest).",
        "",
        "| checkpoint | validation accuracy |",
        "|---|---:|",
        *(
            f"| {r['checkpoint']}{' (kept)' if r['chosen'] else ''} | {r['accuracy']:.3f} "
            f"({r['correct']}/{r['questions']}) |"
            for r in checkpoints
        ),
        "",
        "## Evaluation",
        "",
        "Greedy decoding; an unanswered question counts as wrong; 95% Wilson intervals.",
        "",
        "| test set | questions | accuracy | 95% interval |",
        "|---|---:|---:|---|",
        *(
            f"| {r['split']} | {r['questions']} | {r['accuracy']:.3f} | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] |"
            for r in evaluation
        ),
        "",
        "## Use",
        "",
        "```python",
        *usage(settings, chat),
        "```",
        "",
    ]
    return "\n".join(lines)


def run(
    settings: ExportSettings, out_dir: Path, model: Path, checkpoint_scores: Path, predictions: Path, trainset: Path
) -> dict:
    checkpoints = read_table(checkpoint_scores, CHECKPOINTS).to_pylist()
    evaluation = evaluation_rows(predictions)
    per_question = read_table(trainset, TRAINSET).column("rationales").to_pylist()
    data = {
        "questions": len(per_question),
        "rationales": sum(map(len, per_question)),
        "max_per_question": max(map(len, per_question), default=0),
    }
    target = STAGE.path(out_dir)
    link_model(Path(model), target)
    chat = settings.train.chat.use == "always" or (settings.train.chat.use == "auto" and has_chat_template(target))
    (target / CARD).write_text(card(settings, checkpoints, evaluation, data, chat))
    return {
        "checkpoint": next(r["checkpoint"] for r in checkpoints if r["chosen"]),
        "accuracy": {r["split"]: r["accuracy"] for r in evaluation},
        **data,
    }
