"""Std-CoT and MCC-KD losses as pure functions of tensors (tested on their own, used by the trainer).

Shapes: ``N`` sequences (the rationales of several questions, flattened), ``L`` positions, ``V``
vocabulary, ``S`` answer-span tokens (padded per batch), ``P`` rationale pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sequence_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence, shape (N,).

    Logits at position t predict the token at t+1 (labels are shifted here, not by the caller);
    labels equal to ``IGNORE_INDEX`` (prompt and padding) do not count.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    token_ce = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)
    counted = (shift_labels != IGNORE_INDEX).float()
    return (token_ce * counted).sum(1) / counted.sum(1).clamp(min=1.0)


def gather_span(states: torch.Tensor, span_positions: torch.Tensor) -> torch.Tensor:
    """Rows ``states[n, span_positions[n, s]]``, shape (N, S, ...): only the span, no dense copy.

    The trainer gathers final hidden states (N, L, H) and projects just these rows through the LM
    head, so no second logits-sized tensor (nor its gradient) ever exists.
    """
    rows = torch.arange(states.size(0), device=states.device).unsqueeze(1)
    return states[rows, span_positions]


def answer_consistency(
    span_logits: torch.Tensor,
    span_mask: torch.Tensor,
    pairs: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over pairs (i, j) of (KL(p_i || p_j) + KL(p_j || p_i)) / 2 on the answer span.

    ``span_logits`` (N, S, V) are the logits that predict each answer token (see
    :func:`gather_span`); ``span_mask`` (N, S) marks real span tokens. Gradients reach both sides
    of every pair, as in the paper. Returns a scalar; zero when there are no pairs.
    """
    if pairs.numel() == 0:
        return span_logits.new_zeros((), dtype=torch.float32)
    span_logp = F.log_softmax(span_logits.float() / temperature, dim=-1)
    logp_i, logp_j = span_logp[pairs[:, 0]], span_logp[pairs[:, 1]]
    kl_ij = F.kl_div(logp_j, logp_i, log_target=True, reduction="none").sum(-1)  # KL(p_i || p_j)
    kl_ji = F.kl_div(logp_i, logp_j, log_target=True, reduction="none").sum(-1)
    counted = (span_mask[pairs[:, 0]] & span_mask[pairs[:, 1]]).float()
    per_pair = ((kl_ij + kl_ji) / 2 * counted).sum(1) / counted.sum(1).clamp(min=1.0)
    return per_pair.mean()


@dataclass
class LossParts:
    total: torch.Tensor
    cross_entropy: torch.Tensor
    consistency: torch.Tensor


def mcc_kd_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    span_logits: torch.Tensor,
    span_mask: torch.Tensor,
    pairs: torch.Tensor,
    alpha: float,
    temperature: float = 1.0,
) -> LossParts:
    """MCC-KD: mean cross-entropy over all rationales + alpha x answer consistency.

    With ``alpha == 0`` the consistency term is not computed and the loss is exactly Std-CoT
    (``span_logits`` may then be an empty tensor).
    """
    ce = sequence_cross_entropy(logits, labels).mean()
    if alpha == 0:
        consistency = ce.new_zeros(())
        return LossParts(ce, ce, consistency)
    consistency = answer_consistency(span_logits, span_mask, pairs, temperature)
    return LossParts(ce + alpha * consistency, ce, consistency)


def question_pairs(group_ids: list[int], mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rationale pairs inside each question of a batch, shape (P, 2).

    ``mode="all"`` takes every pair (K(K-1)/2 per question: cheap, since only span rows are
    compared); ``mode="sampled"`` takes one random pair per question per step, as the authors' code.
    """
    by_group: dict[int, list[int]] = {}
    for row, g in enumerate(group_ids):
        by_group.setdefault(g, []).append(row)
    pairs: list[tuple[int, int]] = []
    for rows in by_group.values():
        if len(rows) < 2:
            continue
        if mode == "all":
            pairs += [(a, b) for i, a in enumerate(rows) for b in rows[i + 1 :]]
        elif mode == "sampled":
            pick = torch.randperm(len(rows), generator=generator)[:2].tolist()
            pairs.append((rows[pick[0]], rows[pick[1]]))
        else:
            raise ValueError(f"pair mode must be 'all' or 'sampled', got {mode!r}")
    return torch.tensor(pairs, dtype=torch.long).view(-1, 2)
