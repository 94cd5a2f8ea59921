"""Training at real sizes: tokens/s, MFU and peak memory of Qwen2.5-shaped students, and the memory model.

    python benchmarks/gpu_training.py            # one GPU: 0.5B and 1.5B students (under 6 minutes on an H200)
    python benchmarks/gpu_training.py --smoke    # tiny shapes, 1 step, CPU or GPU: the script works
    python benchmarks/gpu_training.py --memory   # CPU: peak memory of a step vs vocabulary and length

Needs torch and transformers only (no accelerate, peft, vLLM, weights or network): it runs the
trainer's own step, :func:`mcckd.training.step.step_losses` (collate, forward to the final hidden
states, chunked cross-entropy, MCC-KD's span term), not a copy of it.

GPU run. Randomly initialised Qwen2.5-shaped students (0.5B: hidden 896, 24 layers, 14 heads, 2 KV
heads, MLP 4864; 1.5B: hidden 1536, 28 layers, 12 heads, 2 KV heads, MLP 8960; both vocabulary
151,936 with tied embeddings), sdpa attention, bf16 weights trained by plain bf16 AdamW (no fp32
master copy; the trainer's own ``precision="bf16"`` keeps fp32 weights under autocast instead).
Each step is one micro-batch of ``--questions`` questions x K = 4 rationales, each rationale
uniform 1,024-2,048 tokens (a 128-token prompt shared by its question, an answer span of 3 tokens
before the EOS), then backward, gradient clipping and AdamW. Std-CoT and MCC-KD (alpha 0.1, all
pairs), padded (one rationale a row) and packed (the trainer's default: each micro-batch in one row,
attention sequence by sequence, ``mcckd.training.varlen``), chunked loss; and, for comparison,
Std-CoT with full logits on the 0.5B student.
3 warm-up steps, then 10 timed ones. Gradient checkpointing is off unless a step runs out of
memory, then on for that model from there (the table says which).

tokens/s counts real tokens, not padding. MFU = (6 x parameters x tokens/s + attention FLOPs/s) /
peak dense bf16 FLOPs (H100/H200: 989.4e12), attention counted on the real causal sequences:
6 x layers x hidden x l x (l + 1) per sequence of length l (forward + backward). Recomputation
under gradient checkpointing is not counted.

Prints a table, then ``key: value`` lines last; writes the results as JSON to ``$OUT`` if set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a bare copy of the repository

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mcckd.training.loss import IGNORE_INDEX, question_pairs
from mcckd.training.step import Encoded, collate, step_losses
from mcckd.training.varlen import use_varlen_attention

VOCAB = 151_936
SIZES = {
    "0.5B": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, intermediate_size=4864),
    "1.5B": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, intermediate_size=8960),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
}
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
K, PROMPT, SPAN, ALPHA = 4, 128, 3, 0.1
BUDGET_S = 330  # stop starting new configurations after this (the whole run must stay under 6 minutes)


def student(size: str, vocab: int, device: str, dtype: torch.dtype) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab,
        num_key_value_heads=2,
        max_position_embeddings=32_768,
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation="sdpa",
        **SIZES[size],
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.train()


def question_batch(rng: random.Random, questions: int, seq: int, vocab: int, prompt: int = PROMPT) -> list:
    """``questions`` x K rationales of uniform length in [seq/2, seq]: a shared prompt (no labels),
    the reply, an answer span (the same tokens in every rationale of a question), then EOS."""
    batch = []
    for q in range(questions):
        head = [rng.randrange(3, vocab) for _ in range(prompt)]
        answer = tuple(rng.randrange(3, vocab) for _ in range(SPAN))
        group = []
        for _ in range(K):
            n = rng.randint(seq // 2, seq)
            reply = [rng.randrange(3, vocab) for _ in range(n - prompt - SPAN - 1)] + list(answer) + [2]
            ids = head + reply
            first = n - 1 - SPAN  # index of the first answer token; its logits sit one position earlier
            group.append(Encoded(f"q{q}", ids, [IGNORE_INDEX] * prompt + reply, list(range(first - 1, n - 2)), answer))
        batch.append(group)
    return batch


def attention_flops(batch: list, config) -> float:
    lengths = [len(e.input_ids) for group in batch for e in group]
    return sum(6 * config.num_hidden_layers * config.hidden_size * n * (n + 1) for n in lengths)


def train_steps(model, optimizer, batches: list, alpha: float, pack_length: int | None, chunked: bool, device) -> dict:
    """One training step per batch: seconds, rows and token slots (real + padding) of each."""
    lm_head = model.get_output_embeddings()
    times, rows, slots = [], [], []
    for batch in batches:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        t = collate(batch, 0, pack_length)
        rows.append(t["input_ids"].size(0))
        slots.append(t["input_ids"].numel())
        pairs = question_pairs(t["group_ids"], "all").to(device)
        t = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        parts = step_losses(model, lm_head, t, pairs, alpha, chunked=chunked)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return {"times": times, "rows": rows, "slots": slots, "loss": parts.total.item()}


def run_model(size: str, vocab: int, seq: int, questions: int, warmup: int, timed: int, smoke: bool, started: float):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = student(size, vocab, device.type, torch.bfloat16)
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    rng = random.Random(0)
    data = [question_batch(rng, questions, seq, vocab, min(PROMPT, seq // 4)) for _ in range(warmup + timed)]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))
    configs = [("std_cot", 0.0, False, True), ("mcc_kd", ALPHA, False, True)]
    configs += [("std_cot", 0.0, True, True), ("mcc_kd", ALPHA, True, True)]  # packed: one row, varlen attention
    if size in ("0.5B", "tiny"):
        configs.append(("std_cot", 0.0, False, False))  # full logits, for comparison
    results, checkpointing = [], False
    for method, alpha, packed, chunked in configs:
        row = {"model": size, "method": method, "layout": "packed" if packed else "padded"}
        row |= {"loss": "chunked" if chunked else "dense", "parameters": params}
        if time.perf_counter() - started > BUDGET_S and not smoke:
            results.append({**row, "error": "skipped: time budget"})
            continue
        for attempt in range(2):
            row["gradient_checkpointing"] = checkpointing
            out, error = None, None
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            if packed:
                use_varlen_attention(model)
            else:
                model.set_attn_implementation("sdpa")
            try:
                out = train_steps(model, optimizer, data, alpha, sys.maxsize if packed else None, chunked, device)
            except torch.OutOfMemoryError:
                error = "out of memory"
            optimizer.zero_grad(set_to_none=True)
            if out is not None or not chunked or checkpointing or attempt:
                break
            checkpointing = True  # the chunked step did not fit: recompute activations from here on
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if out is None:
            results.append({**row, "error": error})
            continue
        seconds = sum(out["times"][warmup:])
        tokens = sum(len(e.input_ids) for batch in data[warmup:] for group in batch for e in group)
        slots = sum(out["slots"][warmup:])
        flops = 6 * params * tokens + sum(attention_flops(b, config) for b in data[warmup:])
        row |= {
            "questions_x_k": f"{questions}x{K}",
            "tokens_per_step": tokens / timed,
            "rows_per_step": sum(out["rows"][warmup:]) / timed,
            "padding": 1 - tokens / slots,
            "step_ms": 1000 * seconds / timed,
            "tokens_per_s": tokens / seconds,
            "mfu": flops / seconds / peak_flops,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
            "final_loss": out["loss"],
        }
        results.append(row)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results, name


def throughput(args) -> dict:
    started = time.perf_counter()
    if args.smoke:
        plan, vocab, seq, questions, warmup, timed = ["tiny"], 1000, 64, 2, 0, 1
    else:
        plan, vocab, seq, questions, warmup, timed = ["0.5B", "1.5B"], VOCAB, 2048, args.questions, 3, 10
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --smoke (tiny shapes) or --memory (CPU memory model)")
    rows, device = [], "cpu"
    for size in plan:
        got, device = run_model(size, vocab, seq, questions, warmup, timed, args.smoke, started)
        rows += got
    header = (
        f"{'model':6} {'method':8} {'layout':7} {'loss':8} {'ckpt':5} {'QxK':5} {'tok/step':>9} {'rows':>5} "
        f"{'pad':>5} {'ms/step':>9} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}"
    )
    print(f"device: {device}; bf16 weights, plain bf16 AdamW; sdpa; {timed} timed steps after {warmup} warm-up")
    print(header)
    for r in rows:
        left = f"{r['model']:6} {r['method']:8} {r['layout']:7} {r['loss']:8}"
        if "error" in r:
            print(f"{left} {r['error']}")
            continue
        print(
            f"{left} {'on' if r['gradient_checkpointing'] else 'off':5} {r['questions_x_k']:5} "
            f"{r['tokens_per_step']:9.0f} {r['rows_per_step']:5.1f} {r['padding']:5.1%} {r['step_ms']:9.1f} "
            f"{r['tokens_per_s']:10.0f} {r['mfu']:6.3f} {r['peak_gib']:9.2f}"
        )
    print(f"device: {device}")
    print("precision: bf16 weights, bf16 AdamW (no fp32 master copy)")
    print(f"seconds: {time.perf_counter() - started:.0f}")
    for r in rows:
        key = f"{r['model']}_{r['method']}_{r['layout']}" + ("_dense" if r["loss"] == "dense" else "")
        if "error" in r:
            print(f"{key}: {r['error']}")
            continue
        print(f"{key}_gradient_checkpointing: {'on' if r['gradient_checkpointing'] else 'off'}")
        print(f"{key}_tokens_per_s: {r['tokens_per_s']:.0f}")
        print(f"{key}_mfu: {r['mfu']:.3f}")
        print(f"{key}_peak_gib: {r['peak_gib']:.2f}")
    return {"device": device, "smoke": args.smoke, "rows": rows}


# --- the memory model (CPU) ------------------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(vocab: int, seq: int, loss: str) -> dict:
    """One fp32 training step (forward, backward, AdamW) of a tiny-hidden student on one question
    x K rationales of ``seq``/2 to ``seq`` tokens: RSS before it and the process's peak after it."""
    torch.set_num_threads(2)
    model = student("tiny", vocab, "cpu", torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = question_batch(random.Random(0), 1, seq, vocab, 32)
    before = rss_mib()
    started = time.perf_counter()
    train_steps(model, optimizer, [batch], 0.0, None, loss == "chunked", torch.device("cpu"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"before_mib": before, "peak_mib": peak, "step_mib": peak - before, "seconds": time.perf_counter() - started}


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 2**20


def memory_model(args) -> dict:
    """Peak memory of one step vs vocabulary and length, dense logits against the chunked loss.

    Lengths are drawn in [seq/2, seq] as in the GPU run; each configuration runs in its own process
    (peak RSS is per process). A dense step whose logits alone (x 4: logits, shifted float copy,
    log-softmax, gradient) would pass ``--memory-cap-gib`` is not run.
    """
    cap = args.memory_cap_gib or 0.6 * available_gib()
    rows = []
    for vocab in (49_152, 128_256, 151_936):
        for seq in (512, 1024, 2048, 4096):
            for loss in ("dense", "chunked"):
                row = {"vocab": vocab, "seq": seq, "loss": loss}
                logits_gib = K * seq * vocab * 4 / 2**30
                if loss == "dense" and 4 * logits_gib > cap:
                    rows.append({**row, "skipped": f"est. >= {4 * logits_gib:.0f} GiB > cap {cap:.0f} GiB"})
                    continue
                cmd = [sys.executable, __file__, "--memory-child", str(vocab), str(seq), loss]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    rows.append({**row, "skipped": f"failed ({done.returncode}): {done.stderr.strip()[-200:]}"})
                else:
                    rows.append({**row, **json.loads(done.stdout.splitlines()[-1])})
                print(f"  {vocab} {seq} {loss}: {rows[-1].get('step_mib', rows[-1].get('skipped'))}", flush=True)
    print(f"\nPeak memory of one fp32 training step on CPU, K={K} rationales of up to L tokens, tiny student")
    print("(hidden 64, 2 layers): the step's peak RSS above the RSS before it, MiB")
    seqs = (512, 1024, 2048, 4096)
    print(f"{'vocab':>7} {'loss':8} " + " ".join(f"{'L=' + str(s):>9}" for s in seqs))
    for vocab in (49_152, 128_256, 151_936):
        for loss in ("dense", "chunked"):
            cells = []
            for s in seqs:
                r = next(r for r in rows if (r["vocab"], r["seq"], r["loss"]) == (vocab, s, loss))
                cells.append(f"{r['step_mib']:9.0f}" if "step_mib" in r else f"{'-':>9}")
            print(f"{vocab:7d} {loss:8} " + " ".join(cells))
    ratios = [
        (d["step_mib"] / c["step_mib"], d["vocab"], d["seq"])
        for d in rows
        if d["loss"] == "dense" and "step_mib" in d
        for c in rows
        if c["loss"] == "chunked" and (c["vocab"], c["seq"]) == (d["vocab"], d["seq"]) and "step_mib" in c
    ]
    print("('-': dense not run: 4 x its float32 logits would pass the memory cap)")
    for r in rows:
        key = f"memory_{r['vocab']}_{r['seq']}_{r['loss']}_mib"
        print(f"{key}: {r['step_mib']:.0f}" if "step_mib" in r else f"{key}: {r['skipped']}")
    if ratios:
        best = max(ratios)
        print(f"dense_over_chunked_max: {best[0]:.1f} (vocab {best[1]}, L={best[2]})")
    return {"cap_gib": cap, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 step, on CPU or GPU")
    parser.add_argument("--memory", action="store_true", help="the CPU memory model table")
    parser.add_argument("--questions", type=int, default=4, help="questions per step (x 4 rationales)")
    parser.add_argument("--memory-cap-gib", type=float, default=0.0, help="skip dense steps above this (0: 60%% free)")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        vocab, seq, loss = args.memory_child
        print(json.dumps(memory_child(int(vocab), int(seq), loss)))
        return
    results = memory_model(args) if args.memory else throughput(args)
    if os.environ.get("OUT"):
        name = "memory_model.json" if args.memory else "gpu_training_smoke.json" if args.smoke else "gpu_training.json"
        Path(os.environ["OUT"], name).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
