"""The training loop: readable top to bottom, Std-CoT and MCC-KD differ only in ``alpha``.

`accelerate` owns devices, mixed precision and (later) process groups; the step itself is plain
PyTorch so nothing hides what is optimised.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from pydantic import BaseModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from mcckd.training.data import Encoded, collate, make_batches
from mcckd.training.loss import mcc_kd_loss, question_pairs


class TrainConfig(BaseModel):
    """Everything that determines a training run (and so its fingerprint)."""

    alpha: float = 0.0  # 0 = Std-CoT; > 0 = MCC-KD consistency weight
    temperature: float = 1.0
    pair_mode: str = "all"  # "all" pairs of a question's rationales, or one "sampled" pair per step
    epochs: int = 3
    questions_per_batch: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_length: int = 256
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    seed: int = 0


def train_causal_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    groups: list[list[Encoded]],
    cfg: TrainConfig,
    log_path: Path | None = None,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` in place on grouped rationales; returns (and streams to ``log_path``) the loss log."""
    set_seed(cfg.seed)
    accelerator = Accelerator(mixed_precision="bf16" if cfg.precision == "bf16" else "no")
    epoch_batches = [make_batches(groups, cfg.questions_per_batch, cfg.seed + e) for e in range(cfg.epochs)]
    total_steps = sum(len(b) for b in epoch_batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    pair_rng = torch.Generator().manual_seed(cfg.seed)
    log: list[dict[str, float]] = []
    log_file = log_path.open("w") if log_path else None
    bar = tqdm(total=total_steps, desc=desc, unit="step", disable=not accelerator.is_main_process)
    step, started = 0, time.perf_counter()
    for epoch, batches in enumerate(epoch_batches):
        for batch in batches:
            t = collate(batch, tokenizer.pad_token_id)
            pairs = question_pairs(t["group_ids"], cfg.pair_mode, pair_rng)
            t = {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
            with accelerator.autocast():
                logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
            parts = mcc_kd_loss(
                logits,
                t["labels"],
                t["span_positions"],
                t["span_mask"],
                pairs.to(accelerator.device),
                cfg.alpha,
                cfg.temperature,
            )
            accelerator.backward(parts.total)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            row = {
                "step": step,
                "epoch": epoch,
                "loss": parts.total.item(),
                "cross_entropy": parts.cross_entropy.item(),
                "consistency": parts.consistency.item(),
                "lr": scheduler.get_last_lr()[0],
                "seconds": time.perf_counter() - started,
            }
            log.append(row)
            if log_file:
                log_file.write(json.dumps(row) + "\n")
            bar.set_postfix(ce=f"{row['cross_entropy']:.3f}", kl=f"{row['consistency']:.3f}")
            bar.update()
    bar.close()
    if log_file:
        log_file.close()
    return log
