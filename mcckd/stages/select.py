"""Stage 3, select: keep the K most mutually diverse correct rationales of each question.

Diversity is word n-gram Jaccard similarity, the MCC-KD paper's choice. Selection is greedy
max-min: start from the rationale least similar on average to the others, then repeatedly add the
one whose highest similarity to those already kept is lowest. Questions with fewer than K correct
rationales follow ``fewer_than_k``: "keep" them with what they have (one rationale still teaches
through cross-entropy, it just adds no consistency pair) or "drop" them; either way the outcome is
recorded per question in ``outcomes.parquet`` and every unselected rationale gets a ledger row.
"""

from __future__ import annotations

from collections import Counter
from itertools import groupby
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from tqdm.auto import tqdm

from data_schemas import JUDGED, REJECTIONS, SELECTED, SELECTION_OUTCOMES, read_table, rejection, write_table

STAGE_VERSION = 2


class SelectSettings(BaseModel):
    k: int = 3
    ngram: int = 3
    fewer_than_k: Literal["keep", "drop"] = "keep"


def word_ngrams(text: str, n: int) -> frozenset[tuple[str, ...]]:
    words = text.lower().split()
    if len(words) < n:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def select_diverse(texts: list[str], k: int, n: int) -> list[tuple[int, float]]:
    """Indices of up to ``k`` mutually diverse texts, each with its max similarity to the others kept."""
    grams = [word_ngrams(t, n) for t in texts]
    sim = [[jaccard(a, b) for b in grams] for a in grams]
    if len(texts) <= 1:
        return [(i, 0.0) for i in range(len(texts))]
    mean_sim = [(sum(row) - 1.0) / (len(texts) - 1) for row in sim]
    chosen = [min(range(len(texts)), key=lambda i: (mean_sim[i], i))]
    while len(chosen) < min(k, len(texts)):
        rest = [i for i in range(len(texts)) if i not in chosen]
        chosen.append(min(rest, key=lambda i: (max(sim[i][j] for j in chosen), i)))
    return [(i, max((sim[i][j] for j in chosen if j != i), default=0.0)) for i in chosen]


def run(settings: SelectSettings, out_dir: Path, judged: Path) -> dict:
    rows = read_table(judged, JUDGED).to_pylist()
    selected, rejections, outcomes = [], [], []
    by_question = groupby(sorted(rows, key=lambda r: r["question_id"]), key=lambda r: r["question_id"])
    for qid, group in tqdm(by_question, desc="select", unit="question"):
        correct = [r for r in group if r["verdict"] == "correct"]
        picks = select_diverse([r["rationale"] for r in correct], settings.k, settings.ngram)
        if not correct:
            outcome = "no_correct"
        elif len(correct) >= settings.k:
            outcome = "full"
        else:
            outcome = "kept_fewer" if settings.fewer_than_k == "keep" else "dropped_fewer"
        if outcome == "dropped_fewer":
            picks = []
        kept = {i for i, _ in picks}
        for rank, (i, max_sim) in enumerate(picks):
            selected.append({**correct[i], "selection_rank": rank, "max_similarity": max_sim})
        for i, r in enumerate(correct):
            if i not in kept:
                why = "fewer_than_k" if outcome == "dropped_fewer" else "not_diverse_enough"
                rejections.append(
                    rejection(
                        "select", qid, why, f"{len(correct)} correct, k={settings.k}", r["teacher"], r["sample_index"]
                    )
                )
        outcomes.append({"question_id": qid, "correct": len(correct), "selected": len(picks), "outcome": outcome})
    write_table(selected, out_dir / "selected.parquet", SELECTED)
    write_table(rejections, out_dir / "rejections.parquet", REJECTIONS)
    write_table(outcomes, out_dir / "outcomes.parquet", SELECTION_OUTCOMES)
    multi = {o["question_id"] for o in outcomes if o["selected"] >= 2}
    sims = [r["max_similarity"] for r in selected if r["question_id"] in multi]
    return {
        "selected": len(selected),
        "questions": sum(o["selected"] > 0 for o in outcomes),
        "outcomes": dict(Counter(o["outcome"] for o in outcomes)),
        "mean_max_similarity": sum(sims) / len(sims) if sims else None,
    }
