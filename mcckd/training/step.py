"""One micro-batch, from encoded rationales to losses: the part of the trainer that needs torch alone.

No accelerate, pydantic or pyarrow here, so a bare GPU machine (torch + transformers) runs the
trainer's own step in ``benchmarks/gpu_training.py``. :mod:`mcckd.training.loop` adds devices,
precision, DDP and checkpoints around it.

The model is called through its usual forward (so DDP's and peft's wrappers see the call) with
``logits_to_keep`` an empty index: the causal LM returns its final hidden states and computes no
logits; the cross-entropy then runs chunk by chunk from those states and the LM head weight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mcckd.training import uses_consistency_term
from mcckd.training.loss import (
    IGNORE_INDEX,
    LossParts,
    chunked_sequence_cross_entropy,
    gather_span,
    sequence_cross_entropy,
    with_consistency,
)
from mcckd.training.varlen import VARLEN_ATTENTION, varlen_kwargs

# Attention implementations whose masks come from transformers' masking_utils, which reads packed
# sequences off position_ids (a restart = a new sequence) and builds a block-diagonal causal mask;
# and ours, which splits one packed row at the same restarts (mcckd.training.varlen).
PACKING_ATTENTION = ("sdpa", "eager", "flex_attention", VARLEN_ATTENTION)


@dataclass(frozen=True)
class Encoded:
    group: str
    input_ids: list[int]
    labels: list[int]
    span_positions: list[int]  # logit positions predicting each answer token
    span_token_ids: tuple[int, ...]


def pack_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """Sequence indices per row: first-fit decreasing into rows of at most ``budget`` tokens (a
    sequence longer than the budget gets a row of its own); rows in order of their first sequence."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if r is None:
            rows.append([i])
            room.append(budget - lengths[i])
        else:
            rows[r].append(i)
            room[r] -= lengths[i]
    return sorted((sorted(r) for r in rows), key=lambda r: r[0])


def collate(batch: list[list[Encoded]], pad_id: int, pack_length: int | None = None) -> dict:
    """Tensors for one batch of questions: one sequence a row, right-padded, or packed.

    Sequences are the batch's rationales in order (question 0's, then question 1's, ...):
    ``group_ids`` (list, N) numbers their questions 0..G-1. Always present:

    - ``input_ids``, ``labels`` (rows, L): ``IGNORE_INDEX`` where nothing is learned;
    - ``span_positions``, ``span_mask`` (N, S) and ``span_rows`` (N,): sequence n's answer tokens
      are predicted at ``[span_rows[n], span_positions[n, s]]`` where ``span_mask[n, s]``.

    Padded (``pack_length=None``): row n is sequence n, plus ``attention_mask`` (N, L). Packed:
    sequences share rows of up to ``max(pack_length, longest)`` tokens (:func:`pack_rows`), plus
    ``position_ids`` (restarting at 0 for each sequence and for the trailing padding) and
    ``sequence_ids`` (-1 on padding), and no attention mask, so transformers' mask keeps the
    sequences apart. Each sequence's first label is ``IGNORE_INDEX``: the logits before it belong
    to the previous sequence (padded rows never count position 0 either).

    >>> e = Encoded("q", [5, 6, 7], [IGNORE_INDEX, 6, 7], [1], (7,))
    >>> t = collate([[e, e]], pad_id=0, pack_length=6)
    >>> t["input_ids"].tolist(), t["position_ids"].tolist(), t["sequence_ids"].tolist()
    ([[5, 6, 7, 5, 6, 7]], [[0, 1, 2, 0, 1, 2]], [[0, 0, 0, 1, 1, 1]])
    >>> t["span_rows"].tolist(), t["span_positions"].tolist()
    ([0, 0], [[1], [4]])
    """
    seqs = [e for group in batch for e in group]
    group_ids = [g for g, group in enumerate(batch) for _ in group]
    lengths = [len(e.input_ids) for e in seqs]
    packed = pack_length is not None
    rows = pack_rows(lengths, max(pack_length, *lengths)) if packed else [[n] for n in range(len(seqs))]
    length = max(sum(lengths[n] for n in row) for row in rows)
    span = max((len(e.span_positions) for e in seqs), default=0)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    sequence_ids = torch.full((len(rows), length), -1, dtype=torch.long)
    span_positions = torch.zeros((len(seqs), span), dtype=torch.long)
    span_mask = torch.zeros((len(seqs), span), dtype=torch.bool)
    span_rows = torch.zeros(len(seqs), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for n in row:
            e, end = seqs[n], start + lengths[n]
            input_ids[r, start:end] = torch.tensor(e.input_ids)
            labels[r, start:end] = torch.tensor(e.labels)
            if packed:
                labels[r, start] = IGNORE_INDEX
            position_ids[r, start:end] = torch.arange(lengths[n])
            sequence_ids[r, start:end] = n
            k = len(e.span_positions)
            span_positions[n, :k] = torch.tensor(e.span_positions, dtype=torch.long) + start
            span_mask[n, :k] = True
            span_rows[n] = r
            start = end
        position_ids[r, start:] = torch.arange(length - start)
    out = {
        "input_ids": input_ids,
        "labels": labels,
        "span_positions": span_positions,
        "span_mask": span_mask,
        "span_rows": span_rows,
        "group_ids": group_ids,
    }
    if packed:
        return {**out, "position_ids": position_ids, "sequence_ids": sequence_ids}
    return {**out, "attention_mask": (sequence_ids >= 0).long()}


def _config(model):
    return getattr(getattr(model, "module", model), "config", None)  # DDP keeps the model in .module


def model_inputs(model, t: dict) -> dict:
    """Keyword arguments for the model's forward: the padding mask, or packed position ids; no KV
    cache (transformers would build one, and ignores packing when there is one)."""
    if "position_ids" not in t:
        return {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"], "use_cache": False}
    attention = getattr(_config(model), "_attn_implementation", None)
    if attention not in PACKING_ATTENTION and not (str(attention).startswith("flash") and len(t["input_ids"]) == 1):
        raise ValueError(
            f"packing needs an attention whose mask follows position_ids ({', '.join(PACKING_ATTENTION)}; "
            f"flash attention only with one row), but the model uses {attention!r}"
        )
    varlen = varlen_kwargs(t["position_ids"]) if attention == VARLEN_ATTENTION else {}
    return {"input_ids": t["input_ids"], "position_ids": t["position_ids"], "use_cache": False, **varlen}


def final_hidden_states(model, t: dict) -> torch.Tensor:
    """(rows, L, H) after the final norm, from the causal LM's forward with no logits computed."""
    keep_none = torch.zeros(0, dtype=torch.long, device=t["input_ids"].device)
    out = model(**model_inputs(model, t), output_hidden_states=True, logits_to_keep=keep_none)
    if out.logits is not None and out.logits.size(1) > 0:
        raise ValueError(f"{type(model).__name__} ignores logits_to_keep; set chunked_loss=False")
    return out.hidden_states[-1]


def head_weights(lm_head) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight (V, H) and bias; a tied head shares the embedding's parameter."""
    if not isinstance(lm_head, torch.nn.Linear):
        raise ValueError(f"the chunked loss needs a plain nn.Linear LM head, got {type(lm_head).__name__}")
    return lm_head.weight, lm_head.bias


def step_losses(
    model, lm_head, t: dict, pairs: torch.Tensor, alpha: float, temperature: float = 1.0, chunked: bool = True
) -> LossParts:
    """The losses of a collated batch already on the device, with each sequence's cross-entropy.

    ``lm_head`` is the unwrapped model's ``get_output_embeddings()``. Chunked: hidden states from
    the model, the cross-entropy chunk by chunk. Dense (``chunked=False``, for comparison): the
    full logits. Either way MCC-KD's span logits are the LM head on the span's hidden states
    (N x S rows), so the consistency term adds no logits-sized tensor.
    """
    sequence_ids = t.get("sequence_ids")
    consistent = uses_consistency_term(alpha)
    if chunked:
        hidden = final_hidden_states(model, t)
        weight, bias = head_weights(lm_head)
        ce, per_sequence = chunked_sequence_cross_entropy(hidden, weight, t["labels"], bias, sequence_ids)
    else:
        out = model(**model_inputs(model, t), output_hidden_states=consistent)
        per_sequence = sequence_cross_entropy(out.logits, t["labels"], sequence_ids)
        ce, per_sequence = per_sequence.mean(), per_sequence.detach()
        hidden = out.hidden_states[-1] if consistent else None
    span_hidden = gather_span(hidden, t["span_positions"], t["span_rows"]) if consistent else None
    span_logits = lm_head(span_hidden) if consistent else ce.new_empty(0)
    parts = with_consistency(ce, span_logits, t["span_mask"], pairs, alpha, temperature)
    return replace(parts, per_sequence=per_sequence)


@torch.no_grad()
def step_scores(model, lm_head, t: dict, chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced (per-sequence cross-entropy (N,), argmax token at each span position (N, S))."""
    if chunked:
        hidden = final_hidden_states(model, t)
        weight, bias = head_weights(lm_head)
        _, per_sequence = chunked_sequence_cross_entropy(hidden, weight, t["labels"], bias, t.get("sequence_ids"))
        predicted = lm_head(gather_span(hidden, t["span_positions"], t["span_rows"])).argmax(-1)
        return per_sequence, predicted
    logits = model(**model_inputs(model, t)).logits
    per_sequence = sequence_cross_entropy(logits, t["labels"], t.get("sequence_ids"))
    return per_sequence, gather_span(logits, t["span_positions"], t["span_rows"]).argmax(-1)
