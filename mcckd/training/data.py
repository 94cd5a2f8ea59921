"""From (prompt, rationale, answer span) to padded tensors, with the student's own tokenizer.

Prompt and reply come rendered (:mod:`mcckd.rendering`); the answer span arrives as character
offsets in the reply and becomes token positions via the tokenizer's offset mapping. A rationale
whose span does not start and end on token boundaries, or a question whose rationales tokenize
their answer differently, is rejected with a reason rather than mis-aligned.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from mcckd.rendering import Example, prompt_token_ids
from mcckd.training.loss import IGNORE_INDEX
from mcckd.training.step import Encoded as Encoded  # re-exported, as collate: they live in the torch-only step
from mcckd.training.step import collate as collate


@dataclass(frozen=True)
class Rejection:
    group: str
    reason: str
    detail: str


def encode_example(tokenizer: PreTrainedTokenizerBase, ex: Example, max_length: int) -> Encoded | Rejection:
    """Prompt ids (as generation sees them) + reply ids (+ EOS for plain prompts); only the reply,
    its end of turn and the EOS carry labels.

    The answer span must cover whole tokens; a token may reach back over whitespace before the
    answer (" C" is one token in byte-level BPE), which every rationale of the question shares.
    """
    prompt_ids = prompt_token_ids(tokenizer, ex.prompt, ex.chat)
    reply_ids, offsets = reply_tokens(tokenizer, ex, prompt_ids)
    n_reply = len(reply_ids)
    if not ex.chat:
        reply_ids.append(tokenizer.eos_token_id)
        offsets.append((len(ex.completion), len(ex.completion)))
    ids = prompt_ids + reply_ids
    if len(ids) > max_length:
        return Rejection(ex.group, "over_long", f"{len(ids)} tokens > max_length {max_length}")
    labels = [IGNORE_INDEX] * len(prompt_ids) + reply_ids
    positions: list[int] = []
    span_ids: tuple[int, ...] = ()
    if ex.answer_span is not None:
        lo, hi = ex.answer_span
        text = ex.completion
        inside = [i for i, (s, e) in enumerate(offsets[:n_reply]) if s < hi and e > lo]
        starts_clean = bool(inside) and not text[offsets[inside[0]][0] : lo].strip()
        if not inside or not starts_clean or offsets[inside[-1]][1] != hi:
            return Rejection(ex.group, "answer_span_misaligned", f"chars {lo}-{hi} are not on token boundaries")
        positions = [len(prompt_ids) + i - 1 for i in inside]
        span_ids = tuple(reply_ids[i] for i in inside)
    return Encoded(ex.group, ids, labels, positions, span_ids)


def reply_tokens(
    tokenizer: PreTrainedTokenizerBase, ex: Example, prompt_ids: list[int]
) -> tuple[list[int], list[tuple[int, int]]]:
    """The reply's ids and character offsets (in ``ex.completion``) as the tokenizer reads the whole
    text, so a SentencePiece reply gets no word-start marker of its own; tokenized alone only where
    prompt and reply would merge across the boundary (the prompt ids must stay what generation sees)."""
    whole = tokenizer(ex.prompt + ex.completion, return_offsets_mapping=True, add_special_tokens=not ex.chat)
    ids, n = list(whole["input_ids"]), len(prompt_ids)
    if ids[:n] == prompt_ids:
        shift = len(ex.prompt)
        return ids[n:], [(max(0, s - shift), max(0, e - shift)) for s, e in whole["offset_mapping"][n:]]
    alone = tokenizer(ex.completion, return_offsets_mapping=True, add_special_tokens=False)
    return list(alone["input_ids"]), [tuple(o) for o in alone["offset_mapping"]]


def show_loss_mask(tokenizer: PreTrainedTokenizerBase, enc: Encoded) -> str:
    """The example as the model reads it, the tokens that carry loss inside [[...]] and the answer
    span's tokens inside {{...}}: what a person checks to see that the student learns the reply."""
    span = {p + 1 for p in enc.span_positions}
    kinds = [(label != IGNORE_INDEX, i in span) for i, label in enumerate(enc.labels)]
    out, start, inside = [], 0, False
    for end in range(1, len(kinds) + 1):
        if end < len(kinds) and kinds[end] == kinds[start]:
            continue
        learned, answer = kinds[start]
        if learned != inside:
            out.append("[[" if learned else "]]")
            inside = learned
        text = tokenizer.decode(enc.input_ids[start:end])  # runs, so multi-byte characters decode whole
        out.append(f"{{{{{text}}}}}" if answer else text)
        start = end
    return "".join(out) + ("]]" if inside else "")


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


LENGTH_WINDOW = 50  # batches whose questions are sorted by length together (as transformers' mega-batches)


def make_batches(
    groups: list[list[Encoded]], questions_per_batch: int, seed: int, by_length: bool = False
) -> list[list[list[Encoded]]]:
    """Shuffle questions (not rationales: all K of a question share a batch) and cut into batches.

    Batches are as even as possible (sizes differ by at most one), so no short last batch: under
    DDP every rank gets questions in every batch, and each step weighs about the same.

    ``by_length``: within each window of ``LENGTH_WINDOW`` batches the questions are sorted by their
    longest rationale before they are dealt, and the window's batches are shuffled again; a padded
    batch then pads to a length close to its questions' own, while each epoch still sees the
    questions in a seed-dependent order and mix.
    """
    rng = random.Random(seed)
    order = list(range(len(groups)))
    rng.shuffle(order)
    count = max(1, -(-len(order) // questions_per_batch))
    size, extra = divmod(len(order), count)
    bounds = [0, *itertools.accumulate(size + (b < extra) for b in range(count))]
    windows = range(0, count, LENGTH_WINDOW) if by_length else ()
    for w in windows:
        lo, hi = bounds[w], bounds[min(w + LENGTH_WINDOW, count)]
        order[lo:hi] = sorted(order[lo:hi], key=lambda i: max(len(e.input_ids) for e in groups[i]))
    batches = [[groups[i] for i in order[lo:hi]] for lo, hi in itertools.pairwise(bounds)]
    for w in windows:
        window = batches[w : w + LENGTH_WINDOW]
        rng.shuffle(window)
        batches[w : w + LENGTH_WINDOW] = window
    return batches
