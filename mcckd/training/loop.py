"""The training loop: readable top to bottom, Std-CoT and MCC-KD differ only in ``alpha``.

`accelerate` owns devices, mixed precision, process groups (DDP under ``torchrun`` or
``accelerate launch``; FSDP and DeepSpeed through ``accelerate config``) and checkpoint files;
`peft` adds LoRA. The step itself is plain PyTorch so nothing hides what is optimised.

Resumable: every ``checkpoint_every`` optimizer steps the model, optimizer, scheduler, every
rank's RNG and the step counter (which fixes the data position: batches are a pure function of
seed and epoch) go to ``work_dir/checkpoints/step-N``; a new run with the same ``work_dir``
continues from the newest one and its loss log continues as if never interrupted.

With ``keep_epochs`` the model is also saved at the end of every epoch, as a plain model folder in
``work_dir/epochs/epoch-N`` (in ``snapshot_dtype``): what checkpoint selection evaluates.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from mcckd.store import write_progress
from mcckd.training.config import LoraSettings, TrainConfig
from mcckd.training.data import make_batches
from mcckd.training.loss import LossParts, gather_span, question_pairs
from mcckd.training.step import Encoded, collate, step_losses, step_scores
from mcckd.training.varlen import use_varlen_attention


@dataclass
class TrainResult:
    model: PreTrainedModel  # LoRA merged; the best dev checkpoint's weights when there is a dev split
    log: list[dict[str, float]]  # one row per optimizer step
    dev_log: list[dict[str, float]]
    best_step: int | None
    resumed_from: int  # 0 = fresh start
    weight_hashes: list[str]  # one per process: DDP ranks must agree


Micro = tuple[list[list[Encoded]], float]  # this rank's share of a batch, and its loss weight


def step_plan(groups: list[list[Encoded]], cfg: TrainConfig, rank: int, world: int) -> list[tuple[int, list[Micro]]]:
    """(epoch, micro-batches) for every optimizer step: a pure function of the seed, so a step
    number is a data position.

    Each batch's questions are dealt round-robin to the ranks. A rank's loss is weighted by its
    share of the batch's rationales, so the DDP gradient (an average over ranks) is the mean over
    the whole batch even when it does not split evenly: N processes optimise as one.
    """
    plan = []
    for epoch in range(cfg.epochs):
        batches = make_batches(groups, cfg.questions_per_batch, cfg.seed + epoch, cfg.group_by_length)
        if min(len(b) for b in batches) < world:
            raise ValueError(f"batches of {min(len(b) for b in batches)} questions cannot feed {world} processes")
        micro = []
        for b in batches:
            mine = b[rank::world]
            micro.append((mine, world * sum(map(len, mine)) / sum(map(len, b))))
        for s in range(0, len(micro), cfg.gradient_accumulation_steps):
            plan.append((epoch, micro[s : s + cfg.gradient_accumulation_steps]))
    return plan


def autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """bf16 autocast when asked for (weights, gradients and optimizer state stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def to_device(tensors: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


def pack_length(cfg: TrainConfig) -> int | None:
    """Tokens a packed row holds (unbounded: one row, for variable-length attention), or None for
    one padded sequence a row."""
    if cfg.packing == "varlen":
        return sys.maxsize
    return (cfg.pack_length or cfg.max_length) if cfg.packing else None


def forward_loss(model, batch: list[list[Encoded]], cfg: TrainConfig, pad_id: int, pair_rng, accelerator) -> LossParts:
    """One micro-batch (:func:`mcckd.training.step.step_losses`): final hidden states from the
    model, the cross-entropy chunk by chunk against the LM head (never the full logits, unless
    ``chunked_loss=False``), and MCC-KD's span logits from the same hidden states (N x S rows).
    """
    t = collate(batch, pad_id, pack_length(cfg))
    pairs = question_pairs(t["group_ids"], cfg.pair_mode, pair_rng).to(accelerator.device)
    t = to_device(t, accelerator.device)
    lm_head = accelerator.unwrap_model(model).get_output_embeddings()
    with autocast(cfg, accelerator.device):
        return step_losses(model, lm_head, t, pairs, cfg.alpha, cfg.temperature, cfg.chunked_loss)


@torch.no_grad()
def evaluate_dev(model: PreTrainedModel, dev: list[list[Encoded]], cfg: TrainConfig, pad_id: int, accelerator):
    """Teacher-forced dev cross-entropy and answer-token accuracy (every answer token is the argmax)."""
    model.eval()
    ce_sum, exact, count = 0.0, 0, 0
    lm_head = model.get_output_embeddings()
    for batch in make_batches(dev, cfg.questions_per_batch, 0):
        t = to_device(collate(batch, pad_id, pack_length(cfg)), accelerator.device)
        with autocast(cfg, accelerator.device):
            per_sequence, predicted = step_scores(model, lm_head, t, cfg.chunked_loss)
        ce_sum += per_sequence.sum().item()
        target = gather_span(t["input_ids"], t["span_positions"] + 1, t["span_rows"])
        exact += ((predicted == target) | ~t["span_mask"]).all(1).sum().item()
        count += len(t["group_ids"])
    model.train()
    return {"dev_cross_entropy": ce_sum / count, "dev_answer_token_accuracy": exact / count}


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint (its ``trainer_state.json`` is written last, before the rename)."""
    done = [p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, state: dict) -> None:
    """Write to a temp folder, then rename: a kill mid-save leaves the previous checkpoint intact."""
    tmp = root / f"tmp-step-{step}"
    tmp.mkdir(parents=True, exist_ok=True)  # every rank writes its RNG state here
    accelerator.save_state(str(tmp))  # model, optimizer, registered scheduler, each rank's RNG
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        os.replace(tmp, root / f"step-{step}")
        for old in root.glob("step-*"):
            if old.name != f"step-{step}":
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def save_epoch(accelerator: Accelerator, model, cfg: TrainConfig, path: Path, dtype: torch.dtype) -> None:
    """The model as a plain folder (LoRA merged into a copy), written to a temp folder and renamed:
    a resumed run that replays the epoch's last step writes it again."""
    weights = accelerator.get_state_dict(model)  # a collective under FSDP/DeepSpeed
    if not accelerator.is_main_process:
        return
    plain = accelerator.unwrap_model(model)
    if cfg.lora is not None:
        plain = copy.deepcopy(plain).merge_and_unload()
        weights = plain.state_dict()
    tmp = path.with_name(f"tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    trained_dtype, plain.config.dtype = plain.config.dtype, dtype
    try:
        plain.save_pretrained(str(tmp), state_dict={k: v.detach().to("cpu", dtype) for k, v in weights.items()})
    finally:
        plain.config.dtype = trained_dtype
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def weight_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def with_lora(model: PreTrainedModel, lora: LoraSettings) -> PreTrainedModel:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
    return get_peft_model(model, config)


def train_causal_lm(
    model: PreTrainedModel,
    pad_id: int,
    groups: list[list[Encoded]],
    cfg: TrainConfig,
    work_dir: Path,
    dev: list[list[Encoded]] = (),
    desc: str = "train",
    snapshot_dtype: torch.dtype = torch.float32,
) -> TrainResult:
    """Train on grouped rationales, resuming from ``work_dir`` if an earlier run left checkpoints."""
    set_seed(cfg.seed)
    # cpu=True without CUDA: otherwise accelerate ignores torchrun's WORLD_SIZE on a CPU machine.
    # Mixed precision is our own ``autocast``: accelerate keeps one state per process and would
    # silently reuse an earlier run's precision in the same process.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    attention = use_varlen_attention(model) if cfg.packing == "varlen" else None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        model = with_lora(model, cfg.lora)
    plan = step_plan(groups, cfg, accelerator.process_index, accelerator.num_processes)
    eval_steps = eval_points(plan, cfg) if dev else set()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Not prepared: accelerate would step a prepared scheduler once per process per step.
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * len(plan)), len(plan))
    accelerator.register_for_checkpointing(scheduler)
    pair_rng = torch.Generator().manual_seed(cfg.seed)
    ckpt_root, best_path = work_dir / "checkpoints", work_dir / "best.pt"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    state = {"step": 0, "seconds": 0.0, "log": [], "dev_log": [], "best": None}
    latest = latest_checkpoint(ckpt_root)
    if latest is not None:
        accelerator.load_state(str(latest))
        state = json.loads((latest / "trainer_state.json").read_text())
        pair_rng.set_state(torch.tensor(state.pop("pair_rng"), dtype=torch.uint8))
        accelerator.print(f"{desc}: resuming from {latest} (step {state['step']} of {len(plan)})")
    resumed_from = state["step"]
    model.train()
    bar = tqdm(total=len(plan), initial=resumed_from, desc=desc, unit="step", disable=not accelerator.is_main_process)
    started = time.perf_counter() - state["seconds"]
    for step in range(resumed_from + 1, len(plan) + 1):
        epoch, micro_batches = plan[step - 1]
        totals = torch.zeros(3, device=accelerator.device)
        for k, (batch, weight) in enumerate(micro_batches):
            last = k == len(micro_batches) - 1
            with nullcontext() if last else accelerator.no_sync(model):
                parts = forward_loss(model, batch, cfg, pad_id, pair_rng, accelerator)
                accelerator.backward(parts.total * weight / len(micro_batches))
            totals += torch.stack([parts.total, parts.cross_entropy, parts.consistency]).detach().float() * weight
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss, ce, kl = (accelerator.reduce(totals / len(micro_batches), "mean")).tolist()
        row = {"step": step, "epoch": epoch, "loss": loss, "cross_entropy": ce, "consistency": kl}
        state["log"].append({**row, "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started})
        bar.set_postfix(ce=f"{ce:.3f}", kl=f"{kl:.3f}")
        bar.update()
        if accelerator.is_main_process and (step % 10 == 0 or step == len(plan)):
            write_progress(work_dir / "progress.json", step, len(plan), unit="steps")
        if step in eval_steps:
            scores = {
                "step": step,
                "epoch": epoch,
                **evaluate_dev(accelerator.unwrap_model(model), dev, cfg, pad_id, accelerator),
            }
            improved = state["best"] is None or scores["dev_cross_entropy"] < state["best"]["dev_cross_entropy"]
            state["dev_log"].append({**scores, "best": improved})
            if improved:
                state["best"] = scores
                weights = accelerator.get_state_dict(model)  # a collective under FSDP/DeepSpeed
                if accelerator.is_main_process:
                    torch.save(weights, best_path.with_suffix(".tmp"))
                    os.replace(best_path.with_suffix(".tmp"), best_path)
        if cfg.keep_epochs and (step == len(plan) or plan[step][0] != epoch):
            save_epoch(accelerator, model, cfg, work_dir / "epochs" / f"epoch-{epoch + 1}", snapshot_dtype)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < len(plan):
            state["step"], state["seconds"] = step, time.perf_counter() - started
            save_checkpoint(accelerator, ckpt_root, step, {**state, "pair_rng": pair_rng.get_state().tolist()})
    bar.close()
    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(model)
    if state["best"] is not None:
        final.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
    hashes = gather_object([weight_hash(final)])
    if cfg.lora is not None:
        final = final.merge_and_unload()
    if attention is not None:
        final.set_attn_implementation(attention)  # what the caller loaded, not this loop's packing
    best_step = state["best"]["step"] if state["best"] else None
    return TrainResult(final, state["log"], state["dev_log"], best_step, resumed_from, hashes)


def eval_points(plan: list[tuple[int, list]], cfg: TrainConfig) -> set[int]:
    """Steps after which to score the dev split: every ``eval_every`` steps, or each epoch's last."""
    if cfg.eval_every:
        return {s for s in range(1, len(plan) + 1) if s % cfg.eval_every == 0} | {len(plan)}
    return {s + 1 for s, (epoch, _) in enumerate(plan) if s + 1 == len(plan) or plan[s + 1][0] != epoch}
