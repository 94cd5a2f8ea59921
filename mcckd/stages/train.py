"""Stage 5, train: fine-tune the student on the materialized rationales.

In: the training set (``TRAINSET``) and a base model folder. Out (``STAGE.outputs``): the model
(weights + tokenizer; the best dev checkpoint when there is a dev split), the first questions as
the student reads them (loss mask marked), the CE and consistency per step, the dev log, the loss
plot, and the ledger of rationales the student's tokenizer could not align. Std-CoT is
``alpha = 0``; MCC-KD adds alpha x the answer-span consistency between a question's rationales.

With ``loop.keep_epochs`` the model after every epoch is kept too (``checkpoints/epoch-N``, each a
model folder with the tokenizer, in the base model's dtype): the ``choose`` stage keeps the one
that answers the validation questions best. Resumable checkpoints live in the work folder, so a
killed run resumes. Many GPUs (or CPU processes): ``processes = N`` per node (the flow runs
``torch.distributed.run --nproc_per_node N -m mcckd train``), DDP; rank 0 writes the output. Many
nodes: ``nodes = M`` launches ``torchrun --nnodes M`` with c10d rendezvous on each of M nodes (through
Ray, :func:`mcckd.cluster.launch_on_nodes`); the step plan is the same for every world size, so the
losses and checkpoints are those of one process.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from pydantic import Field

from data_schemas import DEV_LOG, TRAIN_LOG, TRAINSET, read_table, rejection
from mcckd.rendering import ChatSettings
from mcckd.settings import HOW_IT_RUNS, Settings
from mcckd.stages.spec import LEDGER, Output, StageSpec
from mcckd.training.config import TrainConfig

if TYPE_CHECKING:  # torch and transformers load only when a training runs (the flows import this module)
    from mcckd.rendering import Example, Renderer


class TrainSettings(Settings):
    base_model: Path = Field(description="a model folder, a GGUF file or a named source (mcckd.models)")
    template: str = Field("student", description="the plain prompt file, for students without a chat template")
    chat: ChatSettings = Field(ChatSettings(), description="students with a chat template: system turn, instruction")
    loop: TrainConfig = Field(TrainConfig(), description="the training loop (alpha 0 = Std-CoT, > 0 = MCC-KD)")
    processes: int = Field(
        1, ge=1, description="processes per node (one per GPU); > 1: the flow launches DDP with torch.distributed.run"
    )
    # Where the ranks run changes no step (the step plan splits each batch the same way for any world
    # size): left out of the fingerprint, so a run begun on one node resumes on several.
    nodes: int = Field(
        1,
        ge=1,
        description="> 1: torchrun on that many nodes of the Ray cluster (RAY_ADDRESS), c10d rendezvous; the store "
        "must be shared storage",
        json_schema_extra=HOW_IT_RUNS,
    )
    rendezvous: str | None = Field(
        None,
        description="host:port of the c10d rendezvous, on one of the nodes; None: the first node, a free port",
        json_schema_extra=HOW_IT_RUNS,
    )


STAGE = StageSpec(
    name="train",
    settings=TrainSettings,
    version=3,  # keep_epochs adds checkpoints; without it the output is unchanged
    inputs=("trainset",),
    outputs={
        "model": Output("model", description="weights and tokenizer (the best dev checkpoint with a dev split)"),
        "rejections": LEDGER,
        "checkpoints": Output(
            "checkpoints",
            description="with loop.keep_epochs: epoch-N, the model after each epoch (base's dtype)",
            optional=True,
        ),
        "rendered_examples": Output(
            "rendered_examples.txt", description="the first questions, as the student reads them"
        ),
        "train_log": Output("train_log.parquet", TRAIN_LOG, "cross-entropy and consistency per step"),
        "dev_log": Output("dev_log.parquet", DEV_LOG, "dev loss at each evaluation"),
        "loss_plot": Output("loss.png", description="the losses over steps"),
    },
    uses_accelerator=True,
    resumable=True,
)


def examples_from_trainset(rows: list[dict], renderer: Renderer) -> list[Example]:
    """One example per rationale, rendered as the student will be asked at evaluation."""
    return [
        renderer.example(row["question_id"], row["question"], text, (span["start"], span["end"]))
        for row in rows
        for text, span in zip(row["rationales"], row["answer_spans"], strict=True)
    ]


def pad_id(tokenizer) -> int:
    """Padding is masked out, so any id does; Llama 3 tokenizers define none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def plot_losses(log: list[dict], dev_log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in log]
    ax.plot(steps, [r["cross_entropy"] for r in log], label="cross-entropy")
    if any(r["consistency"] for r in log):
        ax.plot(steps, [r["consistency"] for r in log], label="consistency (KL)")
    if dev_log:
        ax.plot(
            [r["step"] for r in dev_log], [r["dev_cross_entropy"] for r in dev_log], "o-", label="dev cross-entropy"
        )
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(settings: TrainSettings, out_dir: Path, trainset: Path, work_dir: Path) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mcckd.models import resolve_model
    from mcckd.rendering import Renderer
    from mcckd.runtime import allocator_in_use
    from mcckd.training.data import encode_groups, show_loss_mask, split_dev
    from mcckd.training.loop import train_causal_lm

    rows = read_table(trainset, TRAINSET).to_pylist()
    base = resolve_model(settings.base_model)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    renderer = Renderer(tokenizer, settings.template, settings.chat, source=str(base))
    examples = examples_from_trainset(rows, renderer)
    groups, rejected = encode_groups(tokenizer, examples, settings.loop.max_length)
    STAGE.write(out_dir, "rejections", [rejection("train", r.group, r.reason, r.detail) for r in rejected])
    shown = [show_loss_mask(tokenizer, group[0]) for group in groups[:3]]
    STAGE.path(out_dir, "rendered_examples").write_text("\n\n=====\n\n".join(shown) + "\n")
    train, dev = split_dev(groups, settings.loop.dev_fraction)
    if not train:
        raise ValueError(f"{trainset}: no trainable question left ({len(rejected)} rejected, {len(dev)} in dev)")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    base_dtype = AutoConfig.from_pretrained(str(base)).dtype or torch.float32
    result = train_causal_lm(
        model,
        pad_id(tokenizer),
        train,
        settings.loop,
        work_dir,
        dev,
        desc=f"train alpha={settings.loop.alpha}",
        snapshot_dtype=base_dtype if isinstance(base_dtype, torch.dtype) else getattr(torch, base_dtype),
    )
    result.model.save_pretrained(str(STAGE.path(out_dir)))
    tokenizer.save_pretrained(str(STAGE.path(out_dir)))
    epochs = sorted((work_dir / "epochs").glob("epoch-*"), key=lambda p: int(p.name.split("-")[1]))
    for folder in epochs:
        tokenizer.save_pretrained(str(folder))
        STAGE.path(out_dir, "checkpoints").mkdir(exist_ok=True)
        shutil.move(folder, STAGE.path(out_dir, "checkpoints") / folder.name)
    STAGE.write(out_dir, "train_log", pa.Table.from_pylist(result.log, schema=TRAIN_LOG))
    STAGE.write(out_dir, "dev_log", pa.Table.from_pylist(result.dev_log, schema=DEV_LOG))
    plot_losses(result.log, result.dev_log, STAGE.path(out_dir, "loss_plot"))
    return {
        "chat_template": renderer.chat,
        "questions": len(train),
        "dev_questions": len(dev),
        "rationales": sum(len(g) for g in train),
        "rejected": len(rejected),
        "steps": len(result.log),
        "checkpoints": [folder.name for folder in epochs],
        "resumed_from_step": result.resumed_from,
        "best_step": result.best_step,
        "final_cross_entropy": result.log[-1]["cross_entropy"],
        # What MCC-KD's term weighs in the loss it optimises: alpha x KL over the total, mean over steps.
        "consistency_share": sum(settings.loop.alpha * r["consistency"] / r["loss"] for r in result.log if r["loss"])
        / len(result.log),
        "processes": len(result.weight_hashes),
        "weight_hashes": result.weight_hashes,
        "seconds": result.log[-1]["seconds"],
        "allocator": allocator_in_use(),  # mimalloc when run as `python -m mcckd train` (the flow does)
    }
