"""Uncertainty for the report's accuracies and comparisons, so a reader can tell a real gap from seed and sample noise.

Inputs are correctness matrices: bool arrays of shape (seeds, questions), one row per training seed of a model,
columns the test questions of one split in the same order for every model.

Why these choices:

- A single run gets a Wilson score interval: unlike the normal (Wald) interval it stays inside [0, 1] and keeps its
  coverage at accuracies near 0 and 1, where small students and strong teachers live.
- Several seeds get a two-level bootstrap: each replicate redraws seeds *and* questions with replacement, because
  both the training seed and the particular test questions drawn are sources of variance; resampling only one of
  them would make the interval too narrow.
- Two models are compared on the same questions and seeds with the same two-level bootstrap, paired: each
  replicate redraws seeds and questions and applies the draw to both models. The interval is its percentiles,
  and the p-value its two-sided tail at zero. An exact McNemar test on the discordant (seed, question) pairs,
  pooled over seeds, was used before: it treats a question answered by three seeds as three independent
  questions, so a difference that one seed carries came out "p < 0.001" (``tests/test_stats.py``); the
  bootstrap's p counts the seed as the source of variance it is. With one seed both redraw questions only.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

# Replicates drawn per batch: bounds the (chunk, questions) work arrays to 8 MB each at 2000 questions.
_CHUNK = 500


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for correct/n; with no questions nothing is known, so the whole of [0, 1] (not NaN,
    which JSON cannot hold)."""
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _as_matrix(correct: np.ndarray) -> np.ndarray:
    """A 1-D array is one run; anything else must already be (seeds, questions)."""
    matrix = np.atleast_2d(np.asarray(correct, dtype=bool))
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"expected a (seeds, questions) matrix with at least one seed, got shape {matrix.shape}")
    return matrix


def _bootstrap_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Mean of `values` over replicates that redraw seeds and questions with replacement.

    Seeds are few, so a replicate's seed draw is kept as counts (w @ values is the redrawn seeds' summed rows);
    questions are then drawn as column indices into that, vectorised over a chunk of replicates.
    """
    rng = np.random.default_rng(seed)
    n_seeds, n_questions = values.shape
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=size)
        questions = rng.integers(0, n_questions, size=(size, n_questions))
        seed_means = seed_counts @ values / n_seeds
        means[start : start + size] = np.take_along_axis(seed_means, questions, axis=1).mean(axis=1)
    return means


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def accuracy_interval(
    correct: np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Interval for a model's mean accuracy: Wilson for one run, the two-level bootstrap for several seeds."""
    matrix = _as_matrix(correct)
    if matrix.shape[0] == 1:
        return wilson_interval(int(matrix.sum()), matrix.shape[1], confidence)
    if matrix.shape[1] == 0:
        return 0.0, 1.0
    return _percentile_interval(_bootstrap_means(matrix.astype(float), n_resamples, seed), confidence)


def _evidence(p_value: float, ci: list[float], confidence: float) -> tuple[bool, bool]:
    """(the bootstrap p is below the level, the paired interval excludes zero): both read the same
    bootstrap distribution, so they agree but for ties at zero; a difference is significant when both hold."""
    low, high = ci
    return p_value < 1 - confidence, low > 0 or high < 0


def _bootstrap_p(samples: np.ndarray) -> float:
    """Two-sided p of "no difference" from bootstrap replicates of a difference: twice the smaller share
    of replicates at or beyond zero on either side, each count plus one (never exactly 0)."""
    below, above = int(np.sum(samples <= 0)), int(np.sum(samples >= 0))
    return float(min(1.0, 2 * (min(below, above) + 1) / (len(samples) + 1)))


def paired_comparison(
    a: np.ndarray, b: np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> dict:
    """Accuracy of a minus b on the same seeds and questions, with a paired bootstrap interval and p-value.

    The bootstrap applies the same redrawn seeds and questions to both models (the mean is linear, so that is
    the bootstrap of the per-cell difference a - b). ``a_only``/``b_only`` count the (seed, question) cells
    only one model got right. All values are plain Python types, ready for JSON.
    """
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs matrices of the same shape, got a {a.shape} and b {b.shape}")
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(~a & b))
    if a.shape[1] and a_only + b_only:
        diff = a.astype(float) - b.astype(float)
        replicates = _bootstrap_means(diff, n_resamples, seed)
        low, high = _percentile_interval(replicates, confidence)
        difference, p_value = float(diff.mean()), _bootstrap_p(replicates)
    elif a.shape[1]:  # the same answers everywhere
        difference, low, high, p_value = 0.0, 0.0, 0.0, 1.0
    else:
        difference, low, high, p_value = 0.0, -1.0, 1.0, 1.0
    per_seed = [float(x) for x in (a.mean(axis=1) - b.mean(axis=1))] if a.shape[1] else [0.0] * a.shape[0]
    return {
        "difference": difference,
        "per_seed": per_seed,  # a - b on each seed's questions
        "seeds_won": sum(d > 0 for d in per_seed),  # seeds on which a is ahead
        "ci95": [low, high],
        "confidence": float(confidence),
        "p_value": p_value,
        "a_only": a_only,
        "b_only": b_only,
        "significant": all(_evidence(p_value, [low, high], confidence)),
    }


def describe_comparison(name: str, split: str, result: dict) -> str:
    """One plain sentence for the report, e.g. "On id, mcc_kd is 4.0 points above std_cot (95% CI ...): ..."."""
    first, _, second = name.partition(" - ")
    confidence = result.get("confidence", 0.95)
    diff = 100 * result["difference"]
    low, high = (100 * x for x in result["ci95"])
    side = "above" if diff > 0 else "below"
    where = "level with" if round(diff, 1) == 0 else f"{abs(diff):.1f} points {side}"
    p = result["p_value"]
    p_text = "p < 0.001" if p < 0.001 else f"p = {p:.2g}"
    level = f"{100 * (1 - confidence):.3g}%"
    by_p, by_interval = _evidence(p, result["ci95"], confidence)
    if by_p and by_interval:
        verdict = f"significant at the {level} level."
    elif by_p or by_interval:
        verdict = f"not significant: at the edge of the {level} level (p and interval disagree on a tie at zero)."
    else:
        verdict = "not significant — the data do not tell them apart."
    interval = f"{100 * confidence:.3g}% CI {low:.1f} to {high:.1f}, {p_text}"
    return f"On {split}, {first} is {where} {second} ({interval}): {verdict}"
