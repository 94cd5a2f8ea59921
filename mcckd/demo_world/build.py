"""Build the demo world's models once, by script: a tokenizer, a teacher, and a pretrained student base.

    python -m mcckd.demo_world.build tokenizer
    python -m mcckd.demo_world.build student-base --steps 1500 --precision fp32
    python -m mcckd.demo_world.build teacher --steps 2400

The teacher is a small LLaMA trained from scratch on worked rationales of every split, in every
CoT format and granularity, so it solves what it was trained on and writes in several styles. The
student base is a smaller LLaMA pretrained on the world's text without worked reasoning: the
questions, arithmetic facts and running sums (it adds and subtracts reliably, as a real pretrained
student does), and what each event sentence means (more or fewer items), ood templates included.
Distillation then has to teach it to reason. Both are trained with the pipeline's own trainer and
committed under ``assets/demo`` (a few MB each), so the demo downloads nothing. The committed
tokenizer and student base are those of commit 0eddcb1, built before ``id`` problems told asides:
the base reads problems without them, and the tokenizer reads them (a test checks both).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
from dataclasses import replace
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mcckd.demo_world.assets import STUDENT_BASE_DIR, TEACHER_DIR, TOKENIZER_DIR
from mcckd.demo_world.problems import (
    EVENTS,
    FORMATS,
    GRANULARITIES,
    ITEMS,
    MAX_AMOUNT,
    NAMES,
    SPLITS,
    generate_split,
    write_rationale,
)
from mcckd.demo_world.tokenizer import train_tokenizer
from mcckd.prompts import load_prompt, render
from mcckd.runtime import configure_local_runtime
from mcckd.training.config import TrainConfig
from mcckd.training.data import Example, encode_groups
from mcckd.training.loop import train_causal_lm

# head_dim must be 64 for vLLM's CPU attention; sizes chosen so each model trains in minutes on 2 cores.
TEACHER_SHAPE = dict(hidden_size=192, num_attention_heads=3, num_hidden_layers=4, intermediate_size=512)
STUDENT_SHAPE = dict(hidden_size=128, num_attention_heads=2, num_hidden_layers=3, intermediate_size=384)
# Seeds for model-building data, kept apart from the seeds the flow draws questions with.
BUILD_SEED = 10_000
# The splits whose questions the student base reads (ood_mixed's sentences are all among theirs),
# without asides: the committed base was built from exactly these.
BASE_READING_SPLITS = ("id", "ood_steps", "ood_templates")
# Teacher examples are longer than the trainer's default 256 tokens once asides are walked.
TEACHER_MAX_LENGTH = 384


def teacher_examples(n: int, seed: int) -> list[Example]:
    """Worked rationales for the teacher: half of the split mix is ``id``, half lets it style freely."""
    rng = random.Random(seed)
    template = load_prompt("demo_teacher")
    mix = {"id": n // 2, "ood_steps": n // 4, "ood_templates": n - n // 2 - n // 4}
    examples = []
    for split, count in mix.items():
        for i, p in enumerate(generate_split(split, count, seed)):
            fmt, level = rng.choice(FORMATS), rng.choice(GRANULARITIES)
            shown = rng.random() < 0.5
            prompt = render(template, p.question, fmt if shown else "any", str(level))
            examples.append(Example(f"{split}-{i}", prompt, " " + write_rationale(p, fmt, level, rng)))
    return examples


def _arithmetic_fact(rng: random.Random) -> tuple[int, str, int, int]:
    """One fact of the kind the problems' steps need: a value 0..99 plus or minus 0..MAX_AMOUNT."""
    a = rng.randint(0, 99)
    if rng.random() < 0.5:
        b = rng.randint(0, min(MAX_AMOUNT, 99 - a))
        return a, "+", b, a + b
    b = rng.randint(0, min(MAX_AMOUNT, a))
    return a, "-", b, a - b


def _event_reading(rng: random.Random, templates: list[tuple[str, str]]) -> str:
    """What one event sentence means, with its number: "Ana donates 18 pens to a school. So Ana has
    18 fewer pens." Reading comprehension a real student has, ood templates included."""
    kind, template = rng.choice(templates)
    name, item, n = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(1, MAX_AMOUNT)
    return (
        f"{template.format(name=name, n=n, item=item)} So {name} has {n} {'more' if kind == 'add' else 'fewer'} {item}."
    )


def student_base_texts(n: int, seed: int) -> list[str]:
    """Pretraining text without worked reasoning about the problems: what a small real LM would know.

    The questions of every split (read, never solved); arithmetic facts in the range the problems
    use (either order of an addition) and chains of running sums; what each event sentence means,
    with its number (ood templates included, as a real student knows English verbs it was never
    distilled on); and questions followed by the change each event makes ("+18, -3, +24"), without
    the running amounts or the answer: reading the problem, not solving it.
    """
    rng = random.Random(seed)
    templates = [t for kind in EVENTS.values() for t in kind]
    texts = []
    for split in BASE_READING_SPLITS:
        spec = replace(SPLITS[split], asides=0)
        problems = generate_split(split, n // (4 * len(BASE_READING_SPLITS)), seed, spec)
        for p in problems[: len(problems) // 2]:
            texts.append(p.question)
        for p in problems[len(problems) // 2 :]:
            changes = ", ".join(f"{op}{amount}" for _, op, amount, _ in p.steps)
            texts.append(f"{p.question} The changes: {changes}.")
    while len(texts) < n:
        kind = rng.random()
        if kind < 0.35:
            facts = []
            for _ in range(rng.randint(4, 8)):
                a, op, b, c = _arithmetic_fact(rng)
                facts.append(f"{b} + {a} = {c}." if op == "+" and rng.random() < 0.3 else f"{a} {op} {b} = {c}.")
            texts.append(" ".join(facts))
        elif kind < 0.65:
            value, links = rng.randint(5, 60), []
            for _ in range(rng.randint(2, 6)):
                op = "-" if value > 90 or (value > 1 and rng.random() < 0.5) else "+"
                b = rng.randint(1, min(MAX_AMOUNT, 99 - value if op == "+" else value - 1))
                after = value + b if op == "+" else value - b
                links.append(f"{value} {op} {b} = {after}")
                value = after
            texts.append(", ".join(links) + ".")
        else:
            texts.append(" ".join(_event_reading(rng, templates) for _ in range(rng.randint(2, 4))))
    rng.shuffle(texts)
    return texts


TOKENIZER_VOCAB = 512


def tokenizer_texts() -> list[str]:
    """The text the demo tokenizer is trained on: the teacher's and the student base's, and rationales
    in every style. A change to the world's text changes the tokenizer (a test checks the committed one)."""
    rng = random.Random(BUILD_SEED)
    texts = [ex.prompt + ex.completion for ex in teacher_examples(6000, BUILD_SEED)]
    texts += student_base_texts(2000, BUILD_SEED)
    texts += [
        write_rationale(p, f, g, rng) for p in generate_split("id", 300, 1) for f in FORMATS for g in GRANULARITIES
    ]
    return texts


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = train_tokenizer(tokenizer_texts(), vocab_size=TOKENIZER_VOCAB)
    tokenizer.save_pretrained(str(TOKENIZER_DIR))
    return tokenizer


def new_llama(tokenizer: PreTrainedTokenizerFast, shape: dict) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        num_key_value_heads=shape["num_attention_heads"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    return LlamaForCausalLM(config)


def examples_digest(examples: list[Example]) -> str:
    """Content hash of a model's training text, kept in its ``build.json`` so a test can tell
    whether the committed model was built from the text the current code writes."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps([ex.prompt, ex.completion]).encode())
    return digest.hexdigest()


def student_base_examples(n: int) -> list[Example]:
    return [Example(str(i), "", t) for i, t in enumerate(student_base_texts(n, BUILD_SEED + 1))]


def train_and_save(model, tokenizer, examples: list[Example], cfg: TrainConfig, out_dir: Path, desc: str) -> None:
    groups, rejected = encode_groups(tokenizer, examples, cfg.max_length)
    if rejected:
        raise ValueError(f"{len(rejected)} demo examples did not encode, first: {rejected[0]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work_dir:
        result = train_causal_lm(model, tokenizer.pad_token_id, groups, cfg, Path(work_dir), desc=desc)
    result.model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "train_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in result.log))
    summary = {
        "config": cfg.model_dump(),
        "examples": len(examples),
        "examples_sha256": examples_digest(examples),
        "final": result.log[-1],
    }
    (out_dir / "build.json").write_text(json.dumps(summary, indent=2))


def main() -> None:
    configure_local_runtime()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["tokenizer", "teacher", "student-base"])
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps of 64 sequences")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()
    if args.what == "tokenizer":
        build_tokenizer()
        return
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    batch = 64
    cfg = TrainConfig(
        epochs=1,
        questions_per_batch=batch,
        learning_rate=2e-3,
        warmup_ratio=0.03,
        precision=args.precision,
        packing=False,  # the committed models were built from padded batches
    )
    if args.what == "teacher":
        cfg = cfg.model_copy(update={"max_length": TEACHER_MAX_LENGTH})
        examples = teacher_examples(args.steps * batch, BUILD_SEED)
        train_and_save(new_llama(tokenizer, TEACHER_SHAPE), tokenizer, examples, cfg, TEACHER_DIR, "teacher")
    else:
        examples = student_base_examples(args.steps * batch)
        train_and_save(new_llama(tokenizer, STUDENT_SHAPE), tokenizer, examples, cfg, STUDENT_BASE_DIR, "student-base")


if __name__ == "__main__":
    main()
