"""Std-CoT and MCC-KD losses as pure functions of tensors (tested on their own, used by the trainer).

Shapes: ``N`` sequences (the rationales of several questions, flattened), ``L`` positions, ``V``
vocabulary, ``H`` hidden size, ``S`` answer-span tokens (padded per batch), ``P`` rationale pairs,
``T`` labelled tokens. A row holds one sequence, or several when packed: then ``sequence_ids``
(rows, L) names the sequence of each position (-1 for padding) and losses stay per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from mcckd.training import uses_consistency_term

IGNORE_INDEX = -100
CHUNK_TOKENS = 1024  # rows of logits alive at once in the chunked cross-entropy (x V x ~8 bytes)


def _per_sequence_mean(token_ce: torch.Tensor, sequence: torch.Tensor, count: int) -> torch.Tensor:
    """Mean of the token losses of each of ``count`` sequences; 0 for a sequence with none."""
    sums = token_ce.new_zeros(count).index_add(0, sequence, token_ce)
    tokens = torch.bincount(sequence, minlength=count).to(token_ce.dtype)
    return sums / tokens.clamp(min=1.0)


def _sequence_count(labels: torch.Tensor, sequence_ids: torch.Tensor | None) -> int:
    return labels.size(0) if sequence_ids is None else int(sequence_ids.max().item()) + 1


def sequence_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, sequence_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence, shape (N,): the dense reference.

    Logits at position t predict the token at t+1 (labels are shifted here, not by the caller);
    labels equal to ``IGNORE_INDEX`` (prompt and padding) do not count. Upcasts all logits to
    float32: at real sizes use :func:`chunked_sequence_cross_entropy`, which never builds them.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    token_ce = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)
    counted = shift_labels != IGNORE_INDEX
    if sequence_ids is not None:
        sequence = sequence_ids[:, 1:][counted]
        return _per_sequence_mean(token_ce[counted], sequence, _sequence_count(labels, sequence_ids))
    counted = counted.float()
    return (token_ce * counted).sum(1) / counted.sum(1).clamp(min=1.0)


class _LinearCrossEntropy(torch.autograd.Function):
    """``sum_t weight_t * CE(hidden_t @ W.T + b, target_t)`` chunk by chunk over the T rows.

    As Liger's fused linear cross-entropy: each chunk's logits live only inside the loop, and the
    gradients (of the weighted sum, so backward only scales them) are computed there too; the
    logits are never kept, nor recomputed. Matmuls in ``dtype`` (the autocast dtype), softmax in
    float32, weight and bias gradients accumulated in float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_weights, dtype, chunk, grads):
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            token_ce = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)
            g_hidden = torch.empty_like(hidden) if grads[0] else None
            g_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grads[1] else None
            g_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if grads[2] else None
            for start in range(0, hidden.size(0), chunk):
                h, t = hidden[start : start + chunk].to(dtype), targets[start : start + chunk]
                logits = (h @ w.T if b is None else torch.addmm(b, h, w.T)).float()
                lse = torch.logsumexp(logits, -1)
                rows = torch.arange(t.numel(), device=t.device)
                token_ce[start : start + chunk] = lse - logits[rows, t]
                if not any(grads):
                    continue
                probs = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the float32 logits
                probs[rows, t] -= 1.0
                g_logits = probs.mul_(token_weights[start : start + chunk].unsqueeze(1)).to(dtype)
                del logits, probs
                if g_hidden is not None:
                    g_hidden[start : start + chunk] = g_logits @ w
                if g_weight is not None and dtype == torch.float32:
                    g_weight.addmm_(g_logits.T, h)
                elif g_weight is not None:
                    g_weight.add_(g_logits.T @ h)  # a (V, H) temporary in the low-precision dtype
                if g_bias is not None:
                    g_bias.add_(g_logits.sum(0))
                del g_logits
        ctx.save_for_backward(g_hidden, g_weight, g_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(token_ce)
        return (token_ce * token_weights).sum(), token_ce

    @staticmethod
    def backward(ctx, grad_loss, _grad_token_ce):
        g_hidden, g_weight, g_bias = ctx.saved_tensors
        scale = grad_loss.float()
        out_hidden = None if g_hidden is None else (g_hidden * scale).to(g_hidden.dtype)
        out_weight = None if g_weight is None else (g_weight * scale).to(ctx.dtypes[0])
        out_bias = None if g_bias is None else (g_bias * scale).to(ctx.dtypes[1])
        return out_hidden, out_weight, out_bias, None, None, None, None, None


@cache
def _liger_loss():
    """Liger's fused linear cross-entropy (per token) on CUDA, when installed at >= 0.7.0: earlier
    versions return wrong weight gradients for ``reduction="none"`` (Liger-Kernel PR #1298)."""
    try:
        from importlib.metadata import version

        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        from packaging.version import Version

        fixed = Version(version("liger-kernel")) >= Version("0.7.0")
    except Exception:  # not installed, or a nightly / unusual build: use ours
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="none") if fixed else None


def chunked_sequence_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    sequence_ids: torch.Tensor | None = None,
    chunk: int = CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over sequences, per-sequence values (N,) without gradient) of the next-token CE.

    The same numbers as ``sequence_cross_entropy(hidden @ weight.T + bias, labels)`` from the final
    hidden states (rows, L, H) and the LM head (V, H): only positions whose shifted label counts
    are gathered, then ``chunk`` of them at a time go through the head, so neither the logits nor
    their gradient ever exist in full. Under autocast the logits are in its dtype, the softmax in
    float32. Uses Liger's fused kernel on CUDA when it is installed (>= 0.7.0).
    """
    if weight.dim() != 2 or weight.size(1) != hidden.size(-1):
        raise ValueError(f"LM head weight {tuple(weight.shape)} does not fit hidden size {hidden.size(-1)} (sharded?)")
    count = _sequence_count(labels, sequence_ids)
    counted = labels[:, 1:] != IGNORE_INDEX
    rows, cols = counted.nonzero(as_tuple=True)
    rows_hidden = hidden[:, :-1][rows, cols]  # (T, H)
    targets = labels[:, 1:][rows, cols]
    sequence = rows if sequence_ids is None else sequence_ids[:, 1:][rows, cols]
    per_token = torch.bincount(sequence, minlength=count).to(torch.float32)
    token_weights = 1.0 / (count * per_token[sequence])  # the mean over sequences of each one's mean
    device = hidden.device.type
    liger = _liger_loss() if hidden.is_cuda and targets.numel() else None
    if liger is not None:
        token_ce = liger(weight, rows_hidden, targets, bias).float()
        mean = (token_ce * token_weights).sum()
    else:
        dtype = (
            torch.get_autocast_dtype(device)
            if torch.is_autocast_enabled(device)
            else torch.promote_types(hidden.dtype, weight.dtype)
        )
        needs = (rows_hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        grads = tuple(n and torch.is_grad_enabled() for n in needs)
        mean, token_ce = _LinearCrossEntropy.apply(
            rows_hidden, weight, bias, targets, token_weights, dtype, chunk, grads
        )
    return mean, _per_sequence_mean(token_ce.detach(), sequence, count)


def gather_span(states: torch.Tensor, span_positions: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``states[rows[n], span_positions[n, s]]``, shape (N, S, ...): only the span, no dense copy.

    ``rows`` (N,) is each sequence's row (packed batches); by default sequence n is row n. The
    trainer gathers final hidden states (rows, L, H) and projects just these through the LM head,
    so no second logits-sized tensor (nor its gradient) ever exists.
    """
    if rows is None:
        rows = torch.arange(span_positions.size(0), device=states.device)
    return states[rows.unsqueeze(1), span_positions]


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
    cross_entropy: torch.Tensor  # mean over sequences
    consistency: torch.Tensor
    per_sequence: torch.Tensor | None = None  # each sequence's cross-entropy (N,), no gradient


def with_consistency(
    cross_entropy: torch.Tensor,
    span_logits: torch.Tensor,
    span_mask: torch.Tensor,
    pairs: torch.Tensor,
    alpha: float,
    temperature: float = 1.0,
) -> LossParts:
    """MCC-KD from an already reduced cross-entropy (dense or chunked): CE + alpha x consistency.

    Without the consistency term (``alpha == 0``: :func:`mcckd.training.uses_consistency_term`) it is
    not computed and the loss is exactly Std-CoT (``span_logits`` may then be an empty tensor).
    """
    if not uses_consistency_term(alpha):
        return LossParts(cross_entropy, cross_entropy, cross_entropy.new_zeros(()))
    consistency = answer_consistency(span_logits, span_mask, pairs, temperature)
    return LossParts(cross_entropy + alpha * consistency, cross_entropy, consistency)


def mcc_kd_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    span_logits: torch.Tensor,
    span_mask: torch.Tensor,
    pairs: torch.Tensor,
    alpha: float,
    temperature: float = 1.0,
    sequence_ids: torch.Tensor | None = None,
) -> LossParts:
    """MCC-KD from full logits: mean cross-entropy over all rationales + alpha x answer consistency."""
    ce = sequence_cross_entropy(logits, labels, sequence_ids).mean()
    return with_consistency(ce, span_logits, span_mask, pairs, alpha, temperature)


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
