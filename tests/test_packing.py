"""Packed rows train exactly as padded rows: same per-sequence losses and same gradients, for Std-CoT
and for MCC-KD's span term, on a real (tiny, random) LlamaForCausalLM, both with rows kept apart by
a block-diagonal mask from position_ids (transformers' sdpa and eager attention) and with the whole
batch in one row split sequence by sequence (mcckd.training.varlen)."""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mcckd.training.config import TrainConfig
from mcckd.training.loop import train_causal_lm
from mcckd.training.loss import IGNORE_INDEX, question_pairs
from mcckd.training.step import Encoded, collate, model_inputs, pack_rows, step_losses
from mcckd.training.varlen import VARLEN_ATTENTION, use_varlen_attention

VOCAB = 97


def rationales(questions: int = 3, k: int = 3, seed: int = 0) -> list[list[Encoded]]:
    """K rationales a question: a shared prompt, replies of different lengths, a 1-3 token answer
    span before the final EOS, the same answer tokens in every rationale of a question."""
    rng = random.Random(seed)
    batch = []
    for q in range(questions):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 6))]
        answer = tuple(rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 3)))
        group = []
        for _ in range(k):
            reply = [rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 14))] + list(answer) + [2]
            ids = prompt + reply
            labels = [IGNORE_INDEX] * len(prompt) + reply
            first = len(ids) - 1 - len(answer)  # the first answer token's index
            group.append(Encoded(f"q{q}", ids, labels, [first - 1 + s for s in range(len(answer))], answer))
        batch.append(group)
    return batch


def tiny_llama(attention: str) -> LlamaForCausalLM:
    if attention == VARLEN_ATTENTION:
        model = tiny_llama("sdpa")
        use_varlen_attention(model)
        return model
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        attn_implementation=attention,
    )
    return LlamaForCausalLM(config).float()


def losses_and_grads(model, t: dict, alpha: float, chunked: bool = True):
    model.zero_grad(set_to_none=True)
    pairs = question_pairs(t["group_ids"], "all")
    parts = step_losses(model, model.get_output_embeddings(), t, pairs, alpha, chunked=chunked)
    parts.total.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return parts, grads


def test_collate_packs_rationales_into_rows_and_keeps_them_apart():
    batch = rationales()
    lengths = [len(e.input_ids) for group in batch for e in group]
    t = collate(batch, pad_id=0, pack_length=40)
    assert "attention_mask" not in t
    rows, length = t["input_ids"].shape
    assert rows < len(lengths) and length <= max(40, *lengths)
    assert sorted(n for row in pack_rows(lengths, 40) for n in row) == list(range(len(lengths)))
    for n, e in enumerate(e for group in batch for e in group):
        r, (start,) = t["span_rows"][n].item(), (t["sequence_ids"][t["span_rows"][n]] == n).nonzero()[0].tolist()
        end = start + len(e.input_ids)
        assert t["input_ids"][r, start:end].tolist() == e.input_ids
        assert t["position_ids"][r, start:end].tolist() == list(range(len(e.input_ids)))
        assert t["labels"][r, start].item() == IGNORE_INDEX  # not learned from the previous sequence's last logits
        assert t["labels"][r, start + 1 : end].tolist() == e.labels[1:]
        spans = t["span_positions"][n][t["span_mask"][n]] + 1
        assert tuple(t["input_ids"][r, spans].tolist()) == e.span_token_ids
    padding = t["sequence_ids"] == -1
    assert (t["labels"][padding] == IGNORE_INDEX).all()


@pytest.mark.parametrize(("attention", "pack_length"), [("sdpa", 48), ("eager", 48), (VARLEN_ATTENTION, sys.maxsize)])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_packed_batch_trains_as_the_padded_batch(attention: str, pack_length: int, alpha: float):
    model = tiny_llama(attention)
    batch = rationales()
    padded, packed = collate(batch, 0), collate(batch, 0, pack_length=pack_length)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    if attention == VARLEN_ATTENTION:  # one row, no padding at all
        assert packed["input_ids"].shape == (1, sum(len(e.input_ids) for group in batch for e in group))
    want, want_grads = losses_and_grads(model, padded, alpha)
    got, got_grads = losses_and_grads(model, packed, alpha)
    assert torch.allclose(got.per_sequence, want.per_sequence, atol=1e-5)
    assert torch.allclose(got.total, want.total, atol=1e-5)
    if alpha:
        assert want.consistency > 0 and torch.allclose(got.consistency, want.consistency, atol=1e-5)
    for name, grad in want_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-5), name


@pytest.mark.parametrize(("attention", "pack_length"), [("sdpa", None), ("sdpa", 48), (VARLEN_ATTENTION, sys.maxsize)])
def test_chunked_step_equals_the_dense_step(attention: str, pack_length: int | None):
    """The trainer's default (hidden states, chunked cross-entropy) against full logits."""
    model = tiny_llama(attention)
    t = collate(rationales(seed=1), 0, pack_length)
    want, want_grads = losses_and_grads(model, t, 0.5, chunked=False)
    got, got_grads = losses_and_grads(model, t, 0.5, chunked=True)
    assert torch.allclose(got.per_sequence, want.per_sequence, atol=1e-5)
    assert torch.allclose(got.total, want.total, atol=1e-5)
    for name, grad in want_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-5), name


def test_packing_refuses_an_attention_that_ignores_position_ids():
    t = collate(rationales(), 0, pack_length=48)
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="flash attention only with one row"):
        model_inputs(flash, t)
    one_row = collate(rationales(), 0, pack_length=10_000)
    assert one_row["input_ids"].size(0) == 1 and "position_ids" in model_inputs(flash, one_row)


def test_varlen_attention_refuses_more_than_one_row():
    """Split at position-id restarts, several rows would need one boundary list each; one row only."""
    model = tiny_llama(VARLEN_ATTENTION)
    with pytest.raises(ValueError, match="into one row, got 3 rows"):
        model_inputs(model, collate(rationales(), 0, pack_length=48))


@pytest.mark.slow  # train_causal_lm, twice
def test_the_loop_trains_varlen_as_padded_and_returns_the_models_own_attention(tmp_path):
    """Through ``train_causal_lm``: the same losses step by step as padded batches, and the model
    comes back with the attention it was loaded with (what gets saved and evaluated)."""
    groups = rationales(questions=4, k=2, seed=2)
    logs = {}
    for packing in (False, "varlen"):
        cfg = TrainConfig(epochs=2, questions_per_batch=2, learning_rate=1e-2, packing=packing, checkpoint_every=0)
        result = train_causal_lm(tiny_llama("sdpa"), 0, groups, cfg, tmp_path / str(packing))
        assert result.model.config._attn_implementation == "sdpa"
        logs[packing] = torch.tensor([row["loss"] for row in result.log])
    assert len(logs[False]) == 4 and torch.allclose(logs["varlen"], logs[False], atol=1e-4)
