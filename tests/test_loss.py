"""The MCC-KD loss against a slow, obviously-correct per-example, per-pair reference."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mcckd.training.loss import (
    IGNORE_INDEX,
    answer_consistency,
    chunked_sequence_cross_entropy,
    gather_span,
    mcc_kd_loss,
    question_pairs,
    sequence_cross_entropy,
)


def reference_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sequence: mean over positions t with a label at t+1 of -log p(label[t+1] | logits[t])."""
    out = []
    for n in range(logits.size(0)):
        terms = []
        for t in range(logits.size(1) - 1):
            target = labels[n, t + 1].item()
            if target != IGNORE_INDEX:
                terms.append(-torch.log_softmax(logits[n, t].double(), -1)[target])
        out.append(torch.stack(terms).mean())
    return torch.stack(out)


def reference_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    p = torch.softmax(p_logits.double() / temperature, -1)
    q = torch.softmax(q_logits.double() / temperature, -1)
    return sum(p[v] * math.log(p[v] / q[v]) for v in range(p.numel()))


def reference_consistency(logits, span_positions, span_mask, pairs, temperature) -> torch.Tensor:
    per_pair = []
    for i, j in pairs.tolist():
        terms = []
        for s in range(span_positions.size(1)):
            if span_mask[i, s] and span_mask[j, s]:
                li, lj = logits[i, span_positions[i, s]], logits[j, span_positions[j, s]]
                terms.append((reference_kl(li, lj, temperature) + reference_kl(lj, li, temperature)) / 2)
        per_pair.append(sum(terms) / len(terms))
    return sum(per_pair) / len(per_pair)


def random_batch(seed: int = 0, n: int = 6, length: int = 12, vocab: int = 17, span: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, length, vocab, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, vocab, (n, length), generator=g)
    labels[:, :4] = IGNORE_INDEX  # prompt
    labels[1, 9:] = IGNORE_INDEX  # padding of a shorter row
    span_positions = torch.stack([torch.arange(5, 5 + span) + (r % 3) for r in range(n)])
    span_mask = torch.ones(n, span, dtype=torch.bool)
    span_mask[4, 2] = False  # a question whose answer is one token shorter (rows 4 and 5)
    span_mask[5, 2] = False
    return logits, labels, span_positions, span_mask


def test_cross_entropy_matches_reference():
    logits, labels, *_ = random_batch()
    assert torch.allclose(sequence_cross_entropy(logits, labels).double(), reference_ce(logits, labels), atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_consistency_matches_per_pair_loop(temperature: float):
    logits, _, span_positions, span_mask = random_batch(seed=1)
    pairs = question_pairs([0, 0, 0, 1, 2, 2], "all")
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 2], [4, 5]]
    fast = answer_consistency(gather_span(logits, span_positions), span_mask, pairs, temperature)
    slow = reference_consistency(logits, span_positions, span_mask, pairs, temperature)
    assert abs(fast.item() - float(slow)) < 1e-5


def test_total_is_ce_plus_alpha_consistency():
    logits, labels, span_positions, span_mask = random_batch(seed=2)
    pairs = question_pairs([0, 0, 1, 1, 2, 2], "all")
    parts = mcc_kd_loss(logits, labels, gather_span(logits, span_positions), span_mask, pairs, alpha=0.3)
    expected = reference_ce(logits, labels).mean() + 0.3 * reference_consistency(
        logits, span_positions, span_mask, pairs, 1.0
    )
    assert abs(parts.total.item() - float(expected)) < 1e-5


def test_alpha_zero_is_exactly_std_cot():
    logits, labels, span_positions, span_mask = random_batch(seed=3)
    pairs = question_pairs([0, 0, 1, 1, 2, 2], "all")
    parts = mcc_kd_loss(logits, labels, gather_span(logits, span_positions), span_mask, pairs, alpha=0.0)
    assert torch.equal(parts.total, sequence_cross_entropy(logits, labels).mean())


def test_consistency_is_zero_for_identical_rationales_and_positive_for_different_ones(demo_tokenizer):
    """The demo student (a real, trained causal LM) on one demo question: two copies of one
    rationale give the same answer-span distributions, so the term is zero; two different
    rationales (different tokens before the same answer span) give the student different answer
    distributions, so the term is positive. A term that were always zero, or that compared
    anything but the span, fails here."""
    from transformers import AutoModelForCausalLM

    from mcckd.demo_world.assets import STUDENT_BASE_DIR
    from mcckd.demo_world.problems import generate_split, write_rationale
    from mcckd.rendering import Renderer
    from mcckd.stages.materialize import with_answer_sentence
    from mcckd.training.data import collate, encode_groups
    from mcckd.training.step import step_losses

    [problem] = generate_split("id", 1, seed=0)
    renderer, rng = Renderer(demo_tokenizer), random.Random(0)
    texts = {}
    for fmt in ("plain", "symbolic"):
        text, span, _ = with_answer_sentence(write_rationale(problem, fmt, 2, rng), str(problem.answer))
        texts[fmt] = (text, span)
    assert texts["plain"][0] != texts["symbolic"][0]

    def group(question_id: str, *formats: str):
        examples = [renderer.example(question_id, problem.question, *texts[f]) for f in formats]
        [encoded], rejected = encode_groups(demo_tokenizer, examples, 512)
        assert not rejected
        return encoded

    same, different = group("same", "plain", "plain"), group("different", "plain", "symbolic")
    assert same[0].span_token_ids == different[1].span_token_ids  # one answer, tokenized alike
    assert different[0].input_ids != different[1].input_ids

    model = AutoModelForCausalLM.from_pretrained(str(STUDENT_BASE_DIR)).eval()
    t = collate([same, different], demo_tokenizer.pad_token_id)
    head = model.get_output_embeddings()
    with torch.no_grad():
        zero = step_losses(model, head, t, torch.tensor([[0, 1]]), alpha=1.0).consistency
        positive = step_losses(model, head, t, torch.tensor([[2, 3]]), alpha=1.0).consistency
        both = step_losses(model, head, t, question_pairs(t["group_ids"], "all"), alpha=1.0)
        # The same numbers from the loss function on the model's full logits.
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
        spans = gather_span(logits, t["span_positions"])
        direct = [answer_consistency(spans, t["span_mask"], torch.tensor([p])) for p in ([0, 1], [2, 3])]
    assert zero.item() < 1e-6 and direct[0].item() < 1e-6
    assert positive.item() > 1e-3 and direct[1].item() == pytest.approx(positive.item(), rel=1e-4)
    assert both.consistency.item() == pytest.approx((zero.item() + positive.item()) / 2, rel=1e-4)
    assert both.total.item() == pytest.approx(both.cross_entropy.item() + both.consistency.item(), rel=1e-5)


def test_gradients_reach_both_rationales_of_a_pair():
    logits, _, span_positions, span_mask = random_batch(seed=4)
    logits.requires_grad_(True)
    pairs = torch.tensor([[0, 1]])
    answer_consistency(gather_span(logits, span_positions), span_mask, pairs).backward()
    grad = logits.grad
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    assert grad[2:].abs().sum() == 0  # rows outside the pair get nothing
    # Only the span positions of each row receive gradient.
    touched = grad[0].abs().sum(-1).nonzero().flatten().tolist()
    assert touched == span_positions[0].tolist()


def test_masking_ignores_prompt_and_padding():
    logits, labels, *_ = random_batch(seed=5)
    before = sequence_cross_entropy(logits, labels)
    changed = logits.clone()
    changed[:, :3] = torch.randn_like(changed[:, :3]) * 10  # logits predicting prompt tokens 1..3
    changed[1, 8:] = torch.randn_like(changed[1, 8:]) * 10  # logits predicting padding of row 1
    assert torch.allclose(sequence_cross_entropy(changed, labels), before)


def test_sampled_pairs_take_one_pair_per_question():
    g = torch.Generator().manual_seed(0)
    pairs = question_pairs([0, 0, 0, 1, 1, 2], "sampled", g)
    assert pairs.shape == (2, 2)  # question 2 has one rationale: no pair
    assert set(pairs[0].tolist()) <= {0, 1, 2} and set(pairs[1].tolist()) == {3, 4}


def test_no_pairs_gives_zero_consistency():
    logits, _, span_positions, span_mask = random_batch()
    empty = question_pairs([0, 1, 2, 3, 4, 5], "all")
    assert answer_consistency(gather_span(logits, span_positions), span_mask, empty).item() == 0.0


# --- cross-entropy from hidden states, chunk by chunk ---------------------------------------------


def hidden_batch(seed: int = 0, n: int = 5, length: int = 13, hidden: int = 8, vocab: int = 29, bias: bool = True):
    """Final hidden states and an LM head; rows of different lengths, padding, one row all ignored."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, length, hidden, generator=g, requires_grad=True)
    weight = (torch.randn(vocab, hidden, generator=g) / 2).requires_grad_(True)
    b = torch.randn(vocab, generator=g).requires_grad_(True) if bias else None
    labels = torch.randint(0, vocab, (n, length), generator=g)
    labels[:, :3] = IGNORE_INDEX  # prompt
    labels[1, 8:] = IGNORE_INDEX  # a shorter row, padded
    labels[2, 11:] = IGNORE_INDEX
    labels[3] = IGNORE_INDEX  # nothing to learn in this row: its cross-entropy is 0, as the dense one
    return states, weight, b, labels


def grads_of(loss: torch.Tensor, *tensors: torch.Tensor | None) -> list[torch.Tensor]:
    present = [t for t in tensors if t is not None]
    return list(torch.autograd.grad(loss, present, retain_graph=True))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_chunked_cross_entropy_equals_dense_values_and_gradients(bias: bool, chunk: int):
    states, weight, b, labels = hidden_batch(bias=bias)
    logits = states @ weight.T + (b if bias else 0)
    dense = sequence_cross_entropy(logits, labels)
    mean, per_sequence = chunked_sequence_cross_entropy(states, weight, labels, b, chunk=chunk)
    assert per_sequence.shape == (5,) and per_sequence[3].item() == 0.0
    assert torch.allclose(per_sequence, dense.detach(), atol=1e-5)
    assert torch.allclose(mean, dense.mean(), atol=1e-5)
    for ours, theirs in zip(grads_of(mean, states, weight, b), grads_of(dense.mean(), states, weight, b), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_chunked_cross_entropy_scales_with_the_upstream_gradient():
    states, weight, b, labels = hidden_batch(seed=1)
    mean, _ = chunked_sequence_cross_entropy(states, weight, labels, b, chunk=3)
    dense = sequence_cross_entropy(states @ weight.T + b, labels).mean()
    for ours, theirs in zip(grads_of(-2.5 * mean, states, weight), grads_of(-2.5 * dense, states, weight), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_chunked_cross_entropy_with_tied_embedding_weights():
    """A tied head: the one parameter gets the embedding's and the head's gradients summed."""
    g = torch.Generator().manual_seed(2)
    embedding = torch.randn(29, 8, generator=g).requires_grad_(True)
    mix = torch.randn(8, 8, generator=g) / 3
    _, _, _, labels = hidden_batch(seed=2, bias=False)
    ids = labels.clamp(min=0)
    states = torch.tanh(embedding[ids] @ mix)
    dense = sequence_cross_entropy(states @ embedding.T, labels).mean()
    mean, _ = chunked_sequence_cross_entropy(states, embedding, labels, chunk=4)
    assert torch.allclose(mean, dense, atol=1e-5)
    assert torch.allclose(grads_of(mean, embedding)[0], grads_of(dense, embedding)[0], atol=1e-5)


def test_chunked_cross_entropy_of_packed_rows_is_per_sequence():
    """Rows holding several sequences: ``sequence_ids`` splits them, the dense reference agrees."""
    states, weight, b, labels = hidden_batch(seed=3, length=12)
    states, labels = states[:2], labels[:2].clone()
    sequence_ids = torch.tensor([[0] * 5 + [1] * 7, [2] * 4 + [3] * 6 + [-1] * 2])
    labels[0, 5] = labels[1, 4] = IGNORE_INDEX  # each sequence's first token: predicted by the previous one
    labels[1, 7:] = IGNORE_INDEX  # sequence 3 learns 3 tokens, then padding
    dense = sequence_cross_entropy(states @ weight.T + b, labels, sequence_ids)
    mean, per_sequence = chunked_sequence_cross_entropy(states, weight, labels, b, sequence_ids, chunk=5)
    assert dense.shape == per_sequence.shape == (4,)
    assert torch.allclose(per_sequence, dense.detach(), atol=1e-5)
    for ours, theirs in zip(grads_of(mean, states, weight, b), grads_of(dense.mean(), states, weight, b), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_chunked_cross_entropy_under_bf16_autocast():
    """Logits in bf16 (the autocast dtype), softmax in float32: as the dense loss under autocast;
    gradients come back in the parameters' float32."""
    states, weight, b, labels = hidden_batch(seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = sequence_cross_entropy(torch.nn.functional.linear(states, weight, b), labels).mean()
        mean, _ = chunked_sequence_cross_entropy(states, weight, labels, b, chunk=4)
    full = sequence_cross_entropy(states @ weight.T + b, labels).mean()
    assert abs(mean.item() - dense.item()) < 1e-2 and mean.item() != full.item()
    g_states, g_weight, g_bias = grads_of(mean, states, weight, b)
    assert g_states.dtype == g_weight.dtype == g_bias.dtype == torch.float32
    for ours, theirs in zip((g_states, g_weight, g_bias), grads_of(dense, states, weight, b), strict=True):
        assert torch.allclose(ours, theirs, atol=2e-2)


def test_chunked_cross_entropy_without_grad_only_scores():
    states, weight, b, labels = hidden_batch(seed=5)
    with torch.no_grad():
        mean, per_sequence = chunked_sequence_cross_entropy(states, weight, labels, b)
    assert not mean.requires_grad
    assert torch.allclose(per_sequence, sequence_cross_entropy(states @ weight.T + b, labels).detach(), atol=1e-5)


def test_gather_span_of_packed_rows():
    states = torch.arange(2 * 6).view(2, 6)
    rows, positions = torch.tensor([0, 0, 1]), torch.tensor([[1, 2], [4, 5], [0, 3]])
    assert gather_span(states, positions, rows).tolist() == [[1, 2], [4, 5], [6, 9]]
