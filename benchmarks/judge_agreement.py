"""How often the judge agrees with people on real teacher rationales (tests/data/judge_labels.jsonl).

Precision first: a false "correct" puts a wrong rationale into the student's training data, so it
must be 0; a false "wrong" throws teacher compute away (at most 3%). For comparison, the same
rationales read the way the papers' scripts and common harnesses read them: the last number in the
text (the last choice letter for multiple choice).

    python benchmarks/judge_agreement.py   # needs ../shared/data (or $MCCKD_SHARED_DATA)
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcckd.answers import answer_kind, answers_match
from tests.data.judge_set import HOLDOUT, LabelledRationale, agreement, judge_verdicts, load
from tests.shared_data import SHARED_DATA


def last_candidate_verdicts(items: list[LabelledRationale]) -> list[str]:
    """The usual harness rule: the last number (or choice letter) in the text is the answer."""
    out = []
    for item in items:
        kind = answer_kind(item.gold)
        pattern = r"\(?\b([A-E])\b\)?" if kind == "choice" else r"-?\d[\d,]*(?:\.\d+)?"
        found = re.findall(pattern, item.rationale)
        if not found:
            out.append("no_answer")
        else:
            out.append("correct" if answers_match(found[-1].replace(",", ""), item.gold) else "wrong")
    return out


def print_table(title: str, table: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'source':<22}{'n':>5}{'correct':>9}{'false_correct':>15}{'false_wrong':>13}{'fw_rate':>9}{'agree':>8}")
    for source, row in sorted(table.items(), key=lambda kv: (kv[0] == "overall", kv[0])):
        print(
            f"{source:<22}{row['rationales']:>5}{row['labelled_correct']:>9}{row['false_correct']:>15}"
            f"{row['false_wrong']:>13}{row['false_wrong_rate']:>9.3f}{row['agreement']:>8.3f}"
        )


def main() -> None:
    items = load(SHARED_DATA)
    started = time.perf_counter()
    judged = judge_verdicts(items)
    seconds = time.perf_counter() - started
    ours = agreement(items, judged)
    print_table("baseline: last number / last letter", agreement(items, last_candidate_verdicts(items)))
    print_table("mcckd judge", ours)
    disagreements = [(i, j) for i, j in zip(items, judged, strict=True) if i.verdict != j]
    if disagreements:
        print("\ndisagreements (person vs judge):")
        for item, j in disagreements:
            print(f"  {item.id}: person {item.verdict} ({item.read_answer!r}), judge {j}; gold {item.gold!r}")
    holdout = load(SHARED_DATA, HOLDOUT)
    print_table(
        "mcckd judge on the held-out SVAMP set (tests/data/judge_labels_holdout.jsonl)",
        agreement(holdout, judge_verdicts(holdout)),
    )
    overall = ours["overall"]
    print(f"\njudge_seconds: {seconds:.2f}")
    print(f"judge_false_correct: {overall['false_correct']}")
    print(f"judge_false_wrong_rate: {overall['false_wrong_rate']:.4f}")
    print(f"judge_agreement: {overall['agreement']:.4f}")


if __name__ == "__main__":
    main()
