"""Answer spans become token positions with the student's own tokenizer, or a recorded rejection."""

from __future__ import annotations

import random

from mcckd.training.data import Encoded, Example, collate, encode_example, encode_groups, make_batches
from mcckd.training.loss import IGNORE_INDEX

PROMPT = "Question: Tom has 5 apples. He buys 3. How many?\nAnswer:"


def test_labels_cover_completion_and_eos_only(demo_tokenizer):
    ex = Example("q", PROMPT, " 5 + 3 = 8. The answer is 8.", (26, 27))
    enc = encode_example(demo_tokenizer, ex, 256)
    labelled = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    assert demo_tokenizer.decode(labelled[:-1]) == ex.completion
    assert labelled[-1] == demo_tokenizer.eos_token_id
    assert enc.input_ids[0] == demo_tokenizer.bos_token_id and enc.labels[0] == IGNORE_INDEX


def test_span_positions_point_at_the_answer_tokens(demo_tokenizer):
    completion = " 15 + 11 = 26. The answer is 26."
    start = completion.rindex("26")
    enc = encode_example(demo_tokenizer, Example("q", PROMPT, completion, (start, start + 2)), 256)
    answer_tokens = [enc.input_ids[p + 1] for p in enc.span_positions]  # logits at p predict token p+1
    assert demo_tokenizer.decode(answer_tokens) == "26"
    assert enc.span_token_ids == tuple(answer_tokens)


def test_span_off_token_boundaries_is_rejected_with_reason(demo_tokenizer):
    completion = " The answer is 26."
    start = completion.index("answer") + 1  # "nswer": starts inside a token
    out = encode_example(demo_tokenizer, Example("q", PROMPT, completion, (start, start + 3)), 256)
    assert out.reason == "answer_span_misaligned"


def test_question_whose_spans_tokenize_differently_is_dropped_whole(demo_tokenizer):
    a = " x. The answer is 12."
    b = " y. The answer is 12.0"  # a different answer string: different span tokens
    examples = [
        Example("q1", PROMPT, a, (a.rindex("12"), a.rindex("12") + 2)),
        Example("q1", PROMPT, b, (b.rindex("12.0"), b.rindex("12.0") + 4)),
        Example("q2", PROMPT, a, (a.rindex("12"), a.rindex("12") + 2)),
    ]
    groups, rejected = encode_groups(demo_tokenizer, examples, 256)
    assert [g[0].group for g in groups] == ["q2"]
    assert [(r.group, r.reason) for r in rejected] == [("q1", "answer_span_tokens_differ")]


def test_over_long_rationale_is_rejected_not_truncated(demo_tokenizer):
    out = encode_example(demo_tokenizer, Example("q", PROMPT, " 1 +" * 300, None), 64)
    assert out.reason == "over_long"


def test_collate_pads_and_numbers_questions(demo_tokenizer):
    short = " The answer is 8."
    long = " 5 + 3 = 8. So 8. The answer is 8."
    groups, _ = encode_groups(
        demo_tokenizer,
        [
            Example("a", PROMPT, short, (len(short) - 2, len(short) - 1)),
            Example("a", PROMPT, long, (len(long) - 2, len(long) - 1)),
            Example("b", PROMPT, short, (len(short) - 2, len(short) - 1)),
        ],
        256,
    )
    batch = collate(groups, demo_tokenizer.pad_token_id)
    assert batch["group_ids"] == [0, 0, 1]
    n_short = sum(batch["attention_mask"][0].tolist())
    assert (batch["labels"][0, n_short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, n_short:] == demo_tokenizer.pad_token_id).all()
    assert batch["span_mask"].all()


def _groups(lengths: list[list[int]]) -> list[list[Encoded]]:
    """Questions whose rationales have the given token lengths (ids only; labels do not matter here)."""
    return [
        [Encoded(f"q{q}", [5] * n, [IGNORE_INDEX] * n, [], ()) for n in rationale_lengths]
        for q, rationale_lengths in enumerate(lengths)
    ]


def _padded_tokens(batches: list[list[list[Encoded]]]) -> int:
    """Tokens a padded batch holds: rationales x the batch's longest rationale."""
    return sum(sum(len(g) for g in b) * max(len(e.input_ids) for g in b for e in g) for b in batches)


def test_length_grouped_batches_keep_questions_whole_and_cut_padding():
    rng = random.Random(0)
    # Rationales of one question are of similar length (within 20%); questions range from 20 to 400 tokens.
    bases = [rng.randint(20, 400) for _ in range(203)]
    groups = _groups([[b + rng.randint(-b // 5, b // 5) for _ in range(rng.randint(1, 4))] for b in bases])
    plain = make_batches(groups, 8, seed=3)
    grouped = make_batches(groups, 8, seed=3, by_length=True)
    for batches in (plain, grouped):
        dealt = [g[0].group for b in batches for g in b]
        assert sorted(dealt) == sorted(g[0].group for g in groups)  # every question once, its K together
        assert max(map(len, batches)) - min(map(len, batches)) <= 1
    assert _padded_tokens(grouped) < 0.7 * _padded_tokens(plain)
    assert grouped == make_batches(groups, 8, seed=3, by_length=True)  # a pure function of the seed
    assert grouped != make_batches(groups, 8, seed=4, by_length=True)
    # The order of batches is shuffled, not longest-last: the first batches are not all the shortest.
    longest = [max(len(e.input_ids) for g in b for e in g) for b in grouped]
    assert longest[: len(longest) // 2] != sorted(longest)[: len(longest) // 2]


def test_length_grouping_on_degenerate_sets():
    assert make_batches([], 4, seed=0, by_length=True) == [[]]
    one = _groups([[7, 9]])
    assert make_batches(one, 4, seed=0, by_length=True) == [one]
    same = _groups([[10, 10]] * 9)  # every length equal: grouping changes nothing but the order
    assert sorted(len(b) for b in make_batches(same, 4, seed=0, by_length=True)) == [3, 3, 3]
