"""What determines a training run (its settings, and so its fingerprint), apart from the heavy loop:
the flows and the slim image read these without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mcckd.settings import ADDED_LATER, Settings
from mcckd.training import uses_consistency_term


class LoraSettings(Settings):
    """LoRA adapters (peft); merged into the weights at the end so evaluation loads a plain model."""

    r: int = Field(8, ge=1, description="rank of the adapters")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (lora_alpha): the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: str | list[str] = Field("all-linear", description="modules given adapters (peft's names)")


class TrainConfig(Settings):
    """Everything that determines a training run (and so its fingerprint)."""

    alpha: float = Field(0.0, ge=0, description="0 = Std-CoT; > 0 = MCC-KD consistency weight")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the answer-consistency term")
    pair_mode: Literal["all", "sampled"] = Field(
        "all", description="all pairs of a question's rationales, or one per step"
    )
    epochs: int = Field(3, ge=1, description="passes over the training set")
    questions_per_batch: int = Field(16, ge=1, description="per optimizer micro-batch, across all processes")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW's peak learning rate (cosine schedule)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="share of the optimizer steps spent warming up")
    max_length: int = Field(
        256, ge=1, description="longest example in tokens (prompt + rationale); longer ones are left out"
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = autocast, weights and optimizer stay fp32")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    chunked_loss: bool = Field(
        True, description="cross-entropy from hidden states in chunks; False = full logits (for comparison)"
    )
    # Batches of questions of similar length (less padding; a question's K stay together). Off by default:
    # on the demo world it cost Std-CoT id 0.897 -> 0.468 (docs/training_at_scale.md), as each step saw one kind.
    group_by_length: bool = Field(False, description="batches of questions of similar length (less padding)")
    # "varlen": the whole micro-batch in one row, attention sequence by sequence, no padding, no mask
    # (mcckd.training.varlen; flash attention's own varlen kernels where the model uses them). True: rows of
    # pack_length tokens kept apart by a block-diagonal mask from position_ids. False: one rationale a row, padded.
    packing: bool | Literal["varlen"] = Field(
        "varlen",
        description="varlen: the micro-batch in one row, attention sequence by sequence; True: rows of "
        "pack_length tokens with a block-diagonal mask; False: one rationale a row, padded",
    )
    pack_length: int = Field(0, ge=0, description="tokens a packed row holds (packing=True); 0 = max_length")
    lora: LoraSettings | None = Field(None, description="LoRA adapters; None = full fine-tuning")
    dev_fraction: float = Field(
        0.0, ge=0, lt=1, description="questions held out (by id hash) to pick the best checkpoint"
    )
    eval_every: int = Field(
        0, ge=0, description="optimizer steps between dev evaluations; 0 = at the end of each epoch"
    )
    keep_epochs: bool = Field(
        False,
        description="save the model after every epoch (the train stage's checkpoints/epoch-N), for the choose "
        "stage to keep the best by validation accuracy",
        json_schema_extra=ADDED_LATER,
    )
    checkpoint_every: int = Field(50, ge=0, description="optimizer steps between resumable checkpoints; 0 = none")
    seed: int = Field(0, ge=0, description="RNG seed (set_seed): data order, sampled pairs, new weights; >= 0 (numpy)")

    @property
    def uses_consistency(self) -> bool:
        """MCC-KD (``alpha > 0``: the answer-consistency term is computed and added) or Std-CoT."""
        return uses_consistency_term(self.alpha)
