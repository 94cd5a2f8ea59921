"""What determines a training run (its settings, and so its fingerprint), apart from the heavy loop:
the flows and the slim image read these without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class LoraSettings(BaseModel):
    """LoRA adapters (peft); merged into the weights at the end so evaluation loads a plain model."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


class TrainConfig(BaseModel):
    """Everything that determines a training run (and so its fingerprint)."""

    alpha: float = 0.0  # 0 = Std-CoT; > 0 = MCC-KD consistency weight
    temperature: float = 1.0
    pair_mode: Literal["all", "sampled"] = "all"  # all pairs of a question's rationales, or one per step
    epochs: int = 3
    questions_per_batch: int = 16  # per optimizer micro-batch, across all processes
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_length: int = 256
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast, weights and optimizer stay fp32
    gradient_checkpointing: bool = False
    chunked_loss: bool = True  # cross-entropy from hidden states in chunks; False = full logits (for comparison)
    # Batches of questions of similar length (less padding; a question's K stay together). Off by default:
    # on the demo world it cost Std-CoT id 0.897 -> 0.468 (docs/training_at_scale.md), as each step saw one kind.
    group_by_length: bool = False
    # "varlen": the whole micro-batch in one row, attention sequence by sequence, no padding, no mask
    # (mcckd.training.varlen; flash attention's own varlen kernels where the model uses them). True: rows of
    # pack_length tokens kept apart by a block-diagonal mask from position_ids. False: one rationale a row, padded.
    packing: bool | Literal["varlen"] = "varlen"
    pack_length: int = 0  # tokens a packed row holds (packing=True); 0 = max_length
    lora: LoraSettings | None = None  # None = full fine-tuning
    dev_fraction: float = 0.0  # questions held out (by id hash) to pick the best checkpoint
    eval_every: int = 0  # optimizer steps between dev evaluations; 0 = at the end of each epoch
    checkpoint_every: int = 50  # optimizer steps between resumable checkpoints; 0 = none
    seed: int = 0
