"""MCC-KD training cost against Std-CoT, and our consistency loss against the dense copy-based one.

    python benchmarks/training.py [--steps 20]

1. Step time and peak memory of a full training step (the trainer's own ``forward_loss``: collate,
   forward, loss; then backward, AdamW) of a randomly initialised LLaMA-shaped student (vocabulary
   32k), on the same batches, with alpha = 0 (Std-CoT) and alpha > 0 (MCC-KD, all pairs). Each
   method runs in its own process so peak RSS is its own.
2. The consistency term alone, forward + backward, at vocabulary 32k, span 8, batch 8 (4 questions x
   2 rationales): ours (gather the span rows, one vectorised KL) against a reimplementation of the
   approach in the authors' code (copy each span position's logits into a dense float32 tensor in a
   Python loop, add 7e-5 to every probability and renormalise, then KL).

3. Where CUDA is available: tokens/s and model FLOPs utilisation of MCC-KD training steps of a
   randomly initialised 0.5B-parameter Qwen2.5-shaped student in bf16 autocast.

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

from mcckd.training.config import TrainConfig
from mcckd.training.data import Encoded, collate
from mcckd.training.loop import forward_loss
from mcckd.training.loss import answer_consistency, gather_span, question_pairs
from mcckd.training.varlen import use_varlen_attention

VOCAB, SPAN, BATCH, SEQ = 32_000, 8, 8, 256
SHAPE = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=4, intermediate_size=688)


def batch(seed: int, vocab: int = VOCAB, seq: int = SEQ) -> list[list[Encoded]]:
    """4 questions x 2 rationales, prompt-masked labels, answer span at the end of each rationale."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for q in range(BATCH // 2):
        rows = []
        for _ in range(2):
            ids = torch.randint(3, vocab, (seq,), generator=g).tolist()
            labels = [-100] * 64 + ids[64:]
            positions = list(range(seq - SPAN - 2, seq - 2))
            rows.append(Encoded(str(q), ids, labels, positions, tuple(ids[p + 1] for p in positions)))
        groups.append(rows)
    return groups


def train_steps(alpha: float, steps: int) -> dict:
    """Run in a child process: seconds per step (after 2 warm-up steps) and peak RSS in MiB."""
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, max_position_embeddings=SEQ, **SHAPE))
    use_varlen_attention(model)  # the trainer's default packing, as train_causal_lm sets it up
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg, accelerator = TrainConfig(alpha=alpha), Accelerator(cpu=True)
    times = []
    for step in range(steps + 2):
        b = batch(step)
        started = time.perf_counter()
        forward_loss(model, b, cfg, 0, None, accelerator).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_step": sum(times) / len(times), "peak_mib": peak_mib}


def gpu_throughput(steps: int = 10, seq: int = 1024, questions: int = 4) -> dict:
    """MCC-KD steps of a 0.5B Qwen2.5-shaped student (bf16 autocast) on CUDA: tokens/s and MFU."""
    from accelerate import Accelerator
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=seq,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config).cuda()
    use_varlen_attention(model)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    cfg, accelerator = TrainConfig(alpha=0.05, precision="bf16"), Accelerator()
    data = [[group for group in batch(s, config.vocab_size, seq)[:questions]] for s in range(steps + 2)]
    for step, b in enumerate(data):
        if step == 2:
            torch.cuda.synchronize()
            started = time.perf_counter()
        forward_loss(model, b, cfg, 0, None, accelerator).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    tokens_per_s = steps * questions * 2 * seq / (time.perf_counter() - started)
    # 6 FLOPs per parameter per token (forward + backward) plus attention scores and values.
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq
    peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
    name = torch.cuda.get_device_name()
    peak_flops = next((v for k, v in peak.items() if k in name), float("nan"))
    return {
        "device": name,
        "parameters": params,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * (6 * params + attention) / peak_flops,
    }


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
    """Forward + backward of ``fn(logits, span_positions, span_mask, pairs)`` on full random logits."""
    t = collate(batch(0), 0)
    pairs = question_pairs(t["group_ids"], "all")
    logits = torch.randn(BATCH, SEQ, VOCAB, requires_grad=True)
    times = []
    for r in range(repeats + 2):
        started = time.perf_counter()
        fn(logits, t["span_positions"], t["span_mask"], pairs).backward()
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
    ours = time_consistency(lambda lg, pos, mask, pairs: answer_consistency(gather_span(lg, pos), mask, pairs))
    dense = time_consistency(lambda lg, pos, mask, pairs: dense_copy_consistency(lg, pos, pairs))
    where = f"V={VOCAB}, span {SPAN}, batch {BATCH}"
    print(f"consistency forward+backward ({where}): ours {ours * 1000:.2f} ms, dense copy {dense * 1000:.2f} ms")
    if torch.cuda.is_available():
        gpu = gpu_throughput()
        print(f"{gpu['device']}: {gpu['parameters'] / 1e6:.0f}M-parameter student, bf16, MCC-KD")
        print(f"tokens_per_s: {gpu['tokens_per_s']:.0f}")
        print(f"mfu: {gpu['mfu']:.3f}")
    else:
        print("no CUDA device: tokens/s and MFU of the 0.5B student not measured")
    print(f"step_time_ratio: {runs['mcc_kd']['seconds_per_step'] / runs['std_cot']['seconds_per_step']:.3f}")
    print(f"peak_memory_ratio: {runs['mcc_kd']['peak_mib'] / runs['std_cot']['peak_mib']:.3f}")
    print(f"consistency_speedup_vs_dense: {dense / ours:.1f}")


if __name__ == "__main__":
    main()
