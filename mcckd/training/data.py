"""From (prompt, rationale, answer span) to padded tensors, with the student's own tokenizer.

The answer span arrives as character offsets in the rationale; here it becomes token positions via
the tokenizer's offset mapping. A rationale whose span does not start and end on token boundaries,
or a question whose rationales tokenize their answer differently, is rejected with a reason rather
than mis-aligned.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from mcckd.training.loss import IGNORE_INDEX


@dataclass(frozen=True)
class Example:
    """One rationale of one question, as text."""

    group: str  # question id: rationales of one question share it
    prompt: str
    completion: str
    answer_span: tuple[int, int] | None = None  # character offsets of the answer in ``completion``


@dataclass(frozen=True)
class Encoded:
    group: str
    input_ids: list[int]
    labels: list[int]
    span_positions: list[int]  # logit positions predicting each answer token
    span_token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Rejection:
    group: str
    reason: str
    detail: str


def encode_example(tokenizer: PreTrainedTokenizerBase, ex: Example, max_length: int) -> Encoded | Rejection:
    """Tokenize prompt + completion + EOS; only completion and EOS tokens carry labels."""
    text = ex.prompt + ex.completion
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids = [*list(enc["input_ids"]), tokenizer.eos_token_id]
    offsets = [*list(enc["offset_mapping"]), (len(text), len(text))]
    if len(ids) > max_length:
        return Rejection(ex.group, "over_long", f"{len(ids)} tokens > max_length {max_length}")
    prompt_end = len(ex.prompt)
    special = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    labels = [
        tok if (start >= prompt_end and tok not in special) or i == len(ids) - 1 else IGNORE_INDEX
        for i, (tok, (start, _)) in enumerate(zip(ids, offsets, strict=True))
    ]
    positions: list[int] = []
    span_ids: tuple[int, ...] = ()
    if ex.answer_span is not None:
        lo, hi = prompt_end + ex.answer_span[0], prompt_end + ex.answer_span[1]
        inside = [i for i, (s, e) in enumerate(offsets[:-1]) if s < hi and e > lo and ids[i] not in special]
        if not inside or offsets[inside[0]][0] != lo or offsets[inside[-1]][1] != hi:
            return Rejection(ex.group, "answer_span_misaligned", f"chars {lo}-{hi} are not on token boundaries")
        positions = [i - 1 for i in inside]
        span_ids = tuple(ids[i] for i in inside)
    return Encoded(ex.group, ids, labels, positions, span_ids)


def encode_groups(
    tokenizer: PreTrainedTokenizerBase, examples: list[Example], max_length: int
) -> tuple[list[list[Encoded]], list[Rejection]]:
    """Encode and group by question; drop whole questions whose answer spans disagree."""
    groups: dict[str, list[Encoded]] = {}
    rejections: list[Rejection] = []
    for ex in examples:
        out = encode_example(tokenizer, ex, max_length)
        if isinstance(out, Rejection):
            rejections.append(out)
        else:
            groups.setdefault(out.group, []).append(out)
    kept = []
    for gid, items in groups.items():
        if len({e.span_token_ids for e in items}) > 1:
            rejections.append(Rejection(gid, "answer_span_tokens_differ", "rationales tokenize the answer differently"))
        else:
            kept.append(items)
    return kept, rejections


def split_dev(groups: list[list[Encoded]], fraction: float) -> tuple[list[list[Encoded]], list[list[Encoded]]]:
    """(train, dev) by a hash of the question id: stable when the training set grows or reorders."""
    if not fraction:
        return groups, []
    cut = fraction * 2**32
    in_dev = [int.from_bytes(hashlib.sha256(g[0].group.encode()).digest()[:4], "big") < cut for g in groups]
    return [g for g, d in zip(groups, in_dev, strict=True) if not d], [
        g for g, d in zip(groups, in_dev, strict=True) if d
    ]


def make_batches(groups: list[list[Encoded]], questions_per_batch: int, seed: int) -> list[list[list[Encoded]]]:
    """Shuffle questions (not rationales: all K of a question share a batch) and cut into batches.

    Batches are as even as possible (sizes differ by at most one), so no short last batch: under
    DDP every rank gets questions in every batch, and each step weighs about the same.
    """
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    count = max(1, -(-len(order) // questions_per_batch))
    size, extra = divmod(len(order), count)
    batches, start = [], 0
    for b in range(count):
        end = start + size + (b < extra)
        batches.append([groups[i] for i in order[start:end]])
        start = end
    return batches


def collate(batch: list[list[Encoded]], pad_id: int) -> dict[str, torch.Tensor | list[int]]:
    """Right-padded tensors for one batch of questions; ``group_ids`` numbers the questions 0..G-1."""
    rows = [e for group in batch for e in group]
    group_ids = [g for g, group in enumerate(batch) for _ in group]
    length = max(len(e.input_ids) for e in rows)
    span = max((len(e.span_positions) for e in rows), default=0)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    span_positions = torch.zeros((len(rows), span), dtype=torch.long)
    span_mask = torch.zeros((len(rows), span), dtype=torch.bool)
    for r, e in enumerate(rows):
        n = len(e.input_ids)
        input_ids[r, :n] = torch.tensor(e.input_ids)
        labels[r, :n] = torch.tensor(e.labels)
        attention[r, :n] = 1
        k = len(e.span_positions)
        span_positions[r, :k] = torch.tensor(e.span_positions, dtype=torch.long)
        span_mask[r, :k] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "span_positions": span_positions,
        "span_mask": span_mask,
        "group_ids": group_ids,
    }
