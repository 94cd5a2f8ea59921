"""Variable-length attention for packed rows on any device: each packed sequence attends only to
itself, computed sequence by sequence, with no mask at all.

Packing with a block-diagonal mask (``sdpa`` reading ``position_ids``) keeps sequences apart but
pays for it: torch's CPU attention computes every block under a mask, and the mask costs L^2 per
row, so rows stay short (512) and a tenth of every row is padding. Flash attention's varlen kernels
avoid both, on CUDA only. This registers ``sdpa_varlen`` with transformers' attention interface:
given the packed row's sequence boundaries (``cu_seq_lens_q``, the keyword flash attention takes),
it runs ``scaled_dot_product_attention`` with ``is_causal`` on each sequence's slice, so a whole
micro-batch fits one row with no padding and no attention between sequences
(``benchmarks/training_scale.py`` measures it against the bare step). Without boundaries it is
plain causal ``sdpa``; with a padding mask, ``sdpa`` with that mask.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

VARLEN_ATTENTION = "sdpa_varlen"


def sdpa_varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """(batch, heads, L, d) in, (batch, L, heads, d) out, as transformers' ``sdpa`` forward.

    With ``cu_seq_lens_q`` (one packed row; sequence n spans ``[cu[n], cu[n+1])``), each sequence
    is its own causal attention call; positions past the last boundary (none, when the row is
    exactly the batch) attend among themselves.
    """
    if cu_seq_lens_q is None or attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"{VARLEN_ATTENTION} takes one packed row with cu_seq_lens_q, got {query.shape[0]} rows")
    tail = query.shape[2] - int(cu_seq_lens_q[-1])
    lengths = [n for n in [*cu_seq_lens_q.diff().tolist(), tail] if n > 0]
    # split, not slices: a slice's backward writes a zero tensor of the whole row, once per sequence.
    outputs = [
        sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]
        for q, k, v in zip(*(x.split(lengths, dim=2) for x in (query, key, value)), strict=True)
    ]
    return torch.cat(outputs, dim=1), None


def varlen_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """No mask for rows without padding (packed rows are split by their boundaries instead);
    ``sdpa``'s mask where a padding mask is given, so padded batches stay exact."""
    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make ``sdpa_varlen`` a valid ``attn_implementation`` (idempotent); returns its name."""
    AttentionInterface.register(VARLEN_ATTENTION, sdpa_varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_ATTENTION, varlen_mask)
    return VARLEN_ATTENTION


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """The forward keywords that carry one packed row's sequence boundaries (where its position ids
    restart at 0) to the attention; flash attention's names, which every model passes through."""
    if position_ids.shape[0] != 1:
        raise ValueError(f"{VARLEN_ATTENTION} packs a micro-batch into one row, got {position_ids.shape[0]} rows")
    starts = (position_ids[0] == 0).nonzero().flatten()
    cu = torch.cat([starts, starts.new_tensor([position_ids.shape[1]])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def use_varlen_attention(model: torch.nn.Module) -> str:
    """Switch ``model`` to ``sdpa_varlen`` for one-row packing and return the implementation it had
    (to restore before saving); flash attention stays, it is variable-length already."""
    previous = model.config._attn_implementation
    if not str(previous).startswith("flash"):
        model.set_attn_implementation(register())
    return previous
