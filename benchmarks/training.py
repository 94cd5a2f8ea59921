"""MCC-KD training cost against Std-CoT, and our consistency loss against the dense copy-based one.

    python benchmarks/training.py [--steps 20]

1. Step time and peak memory of a full training step (forward, loss, backward, AdamW) of a randomly
   initialised LLaMA-shaped student (vocabulary 32k), on the same batches, with alpha = 0 (Std-CoT)
   and alpha > 0 (MCC-KD, all pairs). Each method runs in its own process so peak RSS is its own.
2. The consistency term alone, forward + backward, at vocabulary 32k, span 8, batch 8 (4 questions x
   2 rationales): ours (gather the span rows, one vectorised KL) against a reimplementation of the
   approach in the authors' code (copy each span position's logits into a dense float32 tensor in a
   Python loop, add 7e-5 to every probability and renormalise, then KL).

Prints the figures, then ``step_time_ratio``, ``peak_memory_ratio`` and
``consistency_speedup_vs_dense`` as the last lines.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from mcckd.training.loss import answer_consistency, mcc_kd_loss, question_pairs

VOCAB, SPAN, BATCH, SEQ = 32_000, 8, 8, 256
SHAPE = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=4, intermediate_size=688)


def batch(seed: int) -> dict:
    """4 questions x 2 rationales, prompt-masked labels, answer span at the end of each rationale."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=g)
    labels = ids.clone()
    labels[:, :64] = -100
    positions = torch.arange(SEQ - SPAN - 2, SEQ - 2).expand(BATCH, SPAN).clone()
    return {
        "input_ids": ids,
        "labels": labels,
        "span_positions": positions,
        "span_mask": torch.ones(BATCH, SPAN, dtype=torch.bool),
        "pairs": question_pairs([0, 0, 1, 1, 2, 2, 3, 3], "all"),
    }


def train_steps(alpha: float, steps: int) -> dict:
    """Run in a child process: seconds per step (after 2 warm-up steps) and peak RSS in MiB."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, max_position_embeddings=SEQ, **SHAPE))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for step in range(steps + 2):
        b = batch(step)
        started = time.perf_counter()
        logits = model(input_ids=b["input_ids"]).logits
        parts = mcc_kd_loss(logits, b["labels"], b["span_positions"], b["span_mask"], b["pairs"], alpha)
        parts.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_step": sum(times) / len(times), "peak_mib": peak_mib}


def dense_copy_consistency(logits: torch.Tensor, positions: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """The authors' approach, reimplemented: per pair and position, dense float32 copies, smoothed."""
    total = logits.new_zeros((), dtype=torch.float32)
    for i, j in pairs.tolist():
        p_rows = torch.zeros(positions.size(1), logits.size(-1), dtype=torch.float32)
        q_rows = torch.zeros(positions.size(1), logits.size(-1), dtype=torch.float32)
        for s in range(positions.size(1)):
            p_rows[s] = logits[i, positions[i, s]].float().cpu()
            q_rows[s] = logits[j, positions[j, s]].float().cpu()
        p = torch.softmax(p_rows, -1) + 7e-5
        q = torch.softmax(q_rows, -1) + 7e-5
        p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
        total = total + ((p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1)).mean() / 2
    return total / len(pairs)


def time_consistency(fn, repeats: int = 10) -> float:
    b = batch(0)
    logits = torch.randn(BATCH, SEQ, VOCAB, requires_grad=True)
    times = []
    for r in range(repeats + 2):
        started = time.perf_counter()
        fn(logits, b["span_positions"], b["span_mask"], b["pairs"]).backward()
        if r >= 2:
            times.append(time.perf_counter() - started)
        logits.grad = None
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child-alpha", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_alpha is not None:
        print(json.dumps(train_steps(args.child_alpha, args.steps)))
        return
    runs = {}
    for name, alpha in (("std_cot", 0.0), ("mcc_kd", 0.05)):
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child-alpha", str(alpha)]
        runs[name] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        print(f"{name}: {runs[name]['seconds_per_step'] * 1000:.1f} ms/step, peak {runs[name]['peak_mib']:.0f} MiB")
    ours = time_consistency(answer_consistency)
    dense = time_consistency(lambda lg, pos, mask, pairs: dense_copy_consistency(lg, pos, pairs))
    where = f"V={VOCAB}, span {SPAN}, batch {BATCH}"
    print(f"consistency forward+backward ({where}): ours {ours * 1000:.2f} ms, dense copy {dense * 1000:.2f} ms")
    print(f"step_time_ratio: {runs['mcc_kd']['seconds_per_step'] / runs['std_cot']['seconds_per_step']:.3f}")
    print(f"peak_memory_ratio: {runs['mcc_kd']['peak_mib'] / runs['std_cot']['peak_mib']:.3f}")
    print(f"consistency_speedup_vs_dense: {dense / ours:.1f}")


if __name__ == "__main__":
    main()
