"""The judge against people on real teacher rationales (tests/data/judge_labels.jsonl, hand-labelled).

Precision first: no rationale a person read as not reaching the gold answer may be judged correct,
and at most 3% of those a person read as correct may be rejected. ``benchmarks/judge_agreement.py``
prints the same figures per source.
"""

from __future__ import annotations

from collections import Counter

from tests.data.judge_set import VERDICTS, agreement, judge_verdicts, load
from tests.shared_data import SHARED_DATA, needs_shared


@needs_shared
def test_labelled_set_is_whole_and_unchanged():
    items = load(SHARED_DATA)  # checks every shared text against the hash it was labelled with
    assert len(items) >= 300 and len({i.id for i in items}) == len(items)
    assert all(i.verdict in VERDICTS and i.why for i in items)
    sources = Counter(i.source for i in items)
    assert sources["svamp_train"] >= 100 and sources["csqa_written"] >= 50 and sources["gsm8k_dev"] >= 30
    assert sum(s.startswith("cot_") for s in sources) == 7  # every cot-factors file


@needs_shared
def test_judge_agrees_with_people():
    items = load(SHARED_DATA)
    table = agreement(items, judge_verdicts(items))
    overall = table["overall"]
    assert overall["false_correct"] == 0, table
    assert overall["false_wrong_rate"] <= 0.03, table
    assert overall["agreement"] >= 0.95, table
