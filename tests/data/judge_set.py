"""The hand-labelled judge set: real teacher rationales from ``../shared/data`` with verdicts read by people.

``judge_labels.jsonl`` holds, per rationale, where it comes from (file, row, output index), the gold
answer, a SHA-256 of its text, and the label: the verdict a person reached by reading it
(``correct``, ``wrong``, ``no_answer``, ``ambiguous``), the answer they read, and why. The texts of
the shared files are not copied into the repository; :func:`load` reads them from the shared folder
and checks the hash. The CommonsenseQA rationales are ours (the shared file has questions only), so
their text is stored in the label file.

How the set was drawn (:func:`draw`, seed 20261125, run once before any labelling):
130 (question, rationale) pairs uniformly from the 7,000 of ``mcckd/SVAMP/train.json``; 16 rows from
each of the six rationale files of ``cot-factors/`` and 10 from ``SVAMP_only_ans.json`` (gold from
``SVAMP_only_ans.json`` by question text; for the answers-only file, gold from SVAMP train, so rows
are drawn among questions present in both); 40 rows of ``mcckd/GSM8K/dev.json``; 60 questions of
``mcckd/CSQA/dev.json`` for which rationales were written in the styles teachers use.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

LABELS = Path(__file__).with_name("judge_labels.jsonl")
# 100 more SVAMP train rationales (seed 20261126, none of the above), labelled the same way after the
# judge had been developed against LABELS: a check that its rules were not fitted to those rows.
HOLDOUT = Path(__file__).with_name("judge_labels_holdout.jsonl")
SEED = 20261125
VERDICTS = ("correct", "wrong", "no_answer", "ambiguous")
COT_FACTOR_FILES = [
    "SVAMP_ChatGPT_level1_ranked.json",
    "SVAMP_ChatGPT_level3_ranked.json",
    "SVAMP_ChatGPT_level5_ranked.json",
    "0_SVAMP_chatgpt_level3BSM.json",
    "0_SVAMP_chatgpt_level3RaR.json",
    "0_SVAMP_chatgpt_level3SYM.json",
]


@dataclass(frozen=True)
class LabelledRationale:
    id: str
    source: str
    question: str
    gold: str
    rationale: str
    verdict: str  # the person's verdict, one of VERDICTS
    read_answer: str
    why: str


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _key(question: str) -> str:
    return " ".join(question.split())


def _read(shared: Path, rel: str) -> list[dict]:
    return json.loads((shared / rel).read_text())


def draw(shared: Path) -> list[dict]:
    """The references of the set, before labelling (deterministic for the seed)."""
    rng = random.Random(SEED)
    refs: list[dict] = []

    def ref(source: str, rel: str, row: int, output_index: int | None, question: str, gold: str, text: str) -> dict:
        suffix = "" if output_index is None else f"-{output_index}"
        return {
            "id": f"{source}-{row:04d}{suffix}",
            "source": source,
            "file": rel,
            "row": row,
            "output_index": output_index,
            "question": question,
            "gold": gold,
            "text_sha256": text_hash(text),
        }

    svamp = _read(shared, "mcckd/SVAMP/train.json")
    pairs = [(r, k) for r, row in enumerate(svamp) for k in range(len(row["output"]))]
    for r, k in sorted(rng.sample(pairs, 130)):
        row = svamp[r]
        refs.append(
            ref("svamp_train", "mcckd/SVAMP/train.json", r, k, row["instruction"], row["label"], row["output"][k])
        )

    answers = {_key(r["instruction"]): r["output"] for r in _read(shared, "cot-factors/SVAMP_only_ans.json")}
    for name in COT_FACTOR_FILES:
        rel = f"cot-factors/{name}"
        rows = _read(shared, rel)
        source = "cot_" + name.removesuffix(".json").replace("SVAMP_ChatGPT_", "").replace("0_SVAMP_chatgpt_", "")
        for r in sorted(rng.sample(range(len(rows)), 16)):
            q = rows[r]["instruction"]
            refs.append(ref(source, rel, r, None, q, answers[_key(q)], rows[r]["output"]))
    svamp_labels = {_key(r["instruction"]): r["label"] for r in svamp}
    rel = "cot-factors/SVAMP_only_ans.json"
    only = _read(shared, rel)
    both = [r for r, row in enumerate(only) if _key(row["instruction"]) in svamp_labels]
    for r in sorted(rng.sample(both, 10)):
        q = only[r]["instruction"]
        refs.append(ref("cot_only_ans", rel, r, None, q, svamp_labels[_key(q)], only[r]["output"]))

    gsm = _read(shared, "mcckd/GSM8K/dev.json")
    for r in sorted(rng.sample(range(len(gsm)), 40)):
        row = gsm[r]
        refs.append(ref("gsm8k_dev", "mcckd/GSM8K/dev.json", r, None, row["instruction"], row["label"], row["output"]))

    csqa = _read(shared, "mcckd/CSQA/dev.json")
    for r in sorted(rng.sample(range(len(csqa)), 60)):
        row = csqa[r]
        refs.append(
            {
                **ref("csqa_written", "mcckd/CSQA/dev.json", r, None, row["instruction"], row["label"], ""),
                "text_sha256": None,
            }
        )
    return refs


def resolve_text(shared: Path, ref: dict) -> str:
    """The rationale's text: stored for written rationales, else read from the shared file and checked."""
    if ref.get("rationale") is not None:
        return ref["rationale"]
    row = _read(shared, ref["file"])[ref["row"]]
    text = row["output"] if ref["output_index"] is None else row["output"][ref["output_index"]]
    if text_hash(text) != ref["text_sha256"]:
        raise ValueError(f"{ref['file']} row {ref['row']}: text changed since it was labelled ({ref['id']})")
    return text


def load(shared: Path, labels: Path = LABELS) -> list[LabelledRationale]:
    """Every labelled rationale with its text."""
    out = []
    for line in labels.read_text().splitlines():
        ref = json.loads(line)
        out.append(
            LabelledRationale(
                id=ref["id"],
                source=ref["source"],
                question=ref["question"],
                gold=ref["gold"],
                rationale=resolve_text(shared, ref),
                verdict=ref["verdict"],
                read_answer=ref["read_answer"],
                why=ref["why"],
            )
        )
    return out


# The judge's verdicts in the labels' terms; every other judge verdict (empty, over_long, ...) means
# the rationale commits to no usable answer.
JUDGE_TO_LABEL = {"correct": "correct", "wrong_answer": "wrong", "ambiguous_answer": "ambiguous"}


def judge_verdicts(items: list[LabelledRationale]) -> list[str]:
    """The judge stage's own verdict function on each labelled rationale, in the labels' terms."""
    from mcckd.stages.judge import JudgeSettings, verdict

    settings = JudgeSettings()
    out = []
    for item in items:
        v, _, _ = verdict(item.id, item.question, item.gold, item.rationale, "recorded", settings, set())
        out.append(JUDGE_TO_LABEL.get(v, "no_answer"))
    return out


def agreement(items: list[LabelledRationale], judged: list[str]) -> dict[str, dict[str, float]]:
    """Per source and overall: rationales, false "correct" (judge correct, person not), false
    "wrong" (person correct, judge not) and its rate among the person's correct, exact agreement."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for item, j in zip(items, judged, strict=True):
        for key in (item.source, "overall"):
            groups.setdefault(key, []).append((item.verdict, j))
    table = {}
    for key, pairs in groups.items():
        labelled_correct = sum(label == "correct" for label, _ in pairs)
        false_wrong = sum(label == "correct" and j != "correct" for label, j in pairs)
        table[key] = {
            "rationales": len(pairs),
            "labelled_correct": labelled_correct,
            "false_correct": sum(j == "correct" and label != "correct" for label, j in pairs),
            "false_wrong": false_wrong,
            "false_wrong_rate": false_wrong / labelled_correct if labelled_correct else 0.0,
            "agreement": sum(label == j for label, j in pairs) / len(pairs),
        }
    return table
