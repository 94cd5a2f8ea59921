"""Report statistics and figures: intervals that cover, tests that detect, and PNGs that open and plot the data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.image import imread
from scipy.stats import binomtest

from mcckd.plots import plot_accuracy, plot_sweep_heatmaps, plot_teacher_gap, plot_training_curves
from mcckd.stats import _bootstrap_means, accuracy_interval, describe_comparison, paired_comparison, wilson_interval
from mcckd.sweep import Cell


def _matrix(accuracy: float, seeds: int, questions: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((seeds, questions)) < accuracy


# --- Wilson ---------------------------------------------------------------------------------------------------


def test_wilson_matches_known_values_and_contains_estimate():
    low, high = wilson_interval(70, 100)
    assert low == pytest.approx(0.6042, abs=5e-4)
    assert high == pytest.approx(0.7810, abs=5e-4)
    assert low < 0.70 < high


@pytest.mark.parametrize(("correct", "n"), [(0, 50), (50, 50), (0, 1), (1, 1)])
def test_wilson_edges_stay_in_unit_interval(correct: int, n: int):
    low, high = wilson_interval(correct, n)
    assert 0.0 <= low <= correct / n <= high <= 1.0
    assert high - low > 0


def test_wilson_without_questions_is_the_whole_range():
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- accuracy_interval --------------------------------------------------------------------------------------


def test_single_run_interval_is_wilson():
    row = _matrix(0.7, 1, 300)
    assert accuracy_interval(row) == wilson_interval(int(row.sum()), 300)


def test_seed_bootstrap_is_deterministic_and_contains_mean():
    m = _matrix(0.6, 3, 500)
    first = accuracy_interval(m, seed=7)
    assert first == accuracy_interval(m, seed=7)
    assert first[0] < m.mean() < first[1]


def test_seed_bootstrap_narrows_with_more_questions():
    small = accuracy_interval(_matrix(0.6, 3, 200), n_resamples=2_000)
    large = accuracy_interval(_matrix(0.6, 3, 2000), n_resamples=2_000)
    assert (large[1] - large[0]) < 0.6 * (small[1] - small[0])


def test_seed_bootstrap_matches_naive_index_resampling():
    """The vectorised bootstrap must agree with the plain definition: redraw seed rows, then question columns."""
    m = np.random.default_rng(5).random((3, 300)) < np.array([[0.4], [0.5], [0.6]])
    rng = np.random.default_rng(0)
    naive = [m[rng.integers(0, 3, 3)][:, rng.integers(0, 300, 300)].mean() for _ in range(4000)]
    expected = np.quantile(naive, [0.025, 0.975])
    assert accuracy_interval(m) == pytest.approx(tuple(expected), abs=0.01)


def test_seed_bootstrap_widens_when_seeds_disagree():
    """Seed-to-seed variance must show: three seeds at 0.3/0.6/0.9 are less certain than three at 0.6."""
    rng = np.random.default_rng(3)
    agreeing = rng.random((3, 1000)) < 0.6
    disagreeing = rng.random((3, 1000)) < np.array([[0.3], [0.6], [0.9]])
    narrow, wide = accuracy_interval(agreeing), accuracy_interval(disagreeing)
    assert (wide[1] - wide[0]) > 3 * (narrow[1] - narrow[0])


# --- paired_comparison --------------------------------------------------------------------------------------


def test_identical_models_do_not_differ():
    m = _matrix(0.5, 3, 200)
    result = paired_comparison(m, m)
    assert result["difference"] == 0.0
    assert result["p_value"] == 1.0
    assert result["ci95"] == [0.0, 0.0]
    assert (result["a_only"], result["b_only"], result["significant"]) == (0, 0, False)


def test_clearly_better_model_is_detected():
    rng = np.random.default_rng(0)
    b = rng.random((3, 300)) < 0.5
    a = b | (rng.random((3, 300)) < 0.3)  # a keeps every answer b gets right and fixes ~30% of the rest
    result = paired_comparison(a, b)
    assert result["difference"] == pytest.approx(a.mean() - b.mean())
    assert result["p_value"] < 0.001
    assert result["ci95"][0] > 0
    assert result["significant"] is True
    flipped = paired_comparison(b, a)
    assert flipped["difference"] == pytest.approx(-result["difference"])
    assert flipped["ci95"][1] < 0


def test_p_value_is_the_two_sided_tail_of_the_paired_bootstrap():
    # Seed 0: a alone right on questions 0-5, b alone on 6-7; seed 1: a alone on 0-3, b alone on 4-6; rest agree.
    a = np.zeros((2, 20), dtype=bool)
    b = np.zeros((2, 20), dtype=bool)
    a[0, :6] = True
    b[0, 6:8] = True
    a[1, :4] = True
    b[1, 4:7] = True
    a[:, 10:] = b[:, 10:] = True
    result = paired_comparison(a, b, n_resamples=4000)
    assert (result["a_only"], result["b_only"]) == (10, 5)
    assert result["difference"] == pytest.approx((10 - 5) / 40)
    replicates = _bootstrap_means(a.astype(float) - b.astype(float), 4000, 0)
    tail = min(np.sum(replicates <= 0), np.sum(replicates >= 0))
    assert result["p_value"] == pytest.approx(min(1.0, 2 * (tail + 1) / 4001))
    # One seed, 400 questions, a alone right on 40 and b on 10: McNemar's exact p is 1.6e-5; the bootstrap,
    # redrawing questions only, agrees that the difference is clear.
    one_a, one_b = np.zeros(400, bool), np.zeros(400, bool)
    one_a[:40], one_b[40:50] = True, True
    assert paired_comparison(one_a, one_b)["p_value"] < 0.001


def test_a_difference_one_seed_carries_is_not_significant():
    # Seed 0: a alone right on 60 questions; seeds 1 and 2: b alone right on 10 each. Pooled over (seed,
    # question) pairs, McNemar saw 60 against 20 (p < 0.001); redrawing seeds, a third of the replicates
    # have no seed 0 and a below b, so the seed-aware p is large.
    a = np.zeros((3, 200), dtype=bool)
    b = np.zeros((3, 200), dtype=bool)
    a[0, :60] = True
    b[1, :10] = b[2, :10] = True
    result = paired_comparison(a, b)
    assert binomtest(60, 80, 0.5).pvalue < 0.001  # what the pooled test said
    assert result["per_seed"] == pytest.approx([0.3, -0.05, -0.05]) and result["seeds_won"] == 1
    assert result["p_value"] > 0.2
    assert result["ci95"][0] < 0 < result["ci95"][1]
    assert result["significant"] is False
    text = describe_comparison("a - b", "id", result)
    assert "not significant" in text and "do not tell them apart" in text


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 100\).*\(2, 100\)"):
        paired_comparison(np.zeros((3, 100), bool), np.zeros((2, 100), bool))


def test_comparison_is_json_serialisable_plain_types():
    result = paired_comparison(_matrix(0.6, 3, 100, seed=1), _matrix(0.5, 3, 100, seed=2))
    assert json.loads(json.dumps(result)) == result
    assert all(type(v) in (float, int, bool, list) for v in result.values())
    assert all(type(x) is float for x in result["ci95"])


# --- describe_comparison ------------------------------------------------------------------------------------


def test_describe_not_significant():
    result = {"difference": 0.04, "ci95": [-0.015, 0.095], "p_value": 0.16, "significant": False}
    text = describe_comparison("mcc_kd - std_cot", "ood_steps", result)
    assert text == (
        "On ood_steps, mcc_kd is 4.0 points above std_cot (95% CI -1.5 to 9.5, p = 0.16): "
        "not significant — the data do not tell them apart."
    )


def test_describe_significant_and_below():
    result = {"difference": -0.04, "ci95": [-0.068, -0.012], "p_value": 0.004, "significant": True}
    text = describe_comparison("mcc_kd - std_cot", "id", result)
    assert text == (
        "On id, mcc_kd is 4.0 points below std_cot (95% CI -6.8 to -1.2, p = 0.004): significant at the 5% level."
    )
    assert "not significant" not in text


def test_describe_real_result():
    rng = np.random.default_rng(0)
    b = rng.random((3, 300)) < 0.5
    text = describe_comparison("a - b", "id", paired_comparison(b | (rng.random((3, 300)) < 0.3), b))
    assert "p < 0.001" in text
    assert "significant at the 5% level" in text


# --- plots --------------------------------------------------------------------------------------------------

METRICS = {
    "teacher": {"id": 0.98, "ood_steps": 0.95, "ood_templates": 0.99},
    "untrained": {"id": 0.05, "ood_steps": 0.02, "ood_templates": 0.04},
    "std_cot": {"id": 0.61, "ood_steps": 0.40, "ood_templates": 0.55},
    "mcc_kd": {"id": 0.63, "ood_steps": 0.44, "ood_templates": 0.57},
    "per_seed": {
        "std_cot": {"id": [0.61, 0.63, 0.60], "ood_steps": [0.4, 0.41, 0.39], "ood_templates": [0.55, 0.56, 0.54]},
        "mcc_kd": {"id": [0.62, 0.64, 0.63], "ood_steps": [0.43, 0.45, 0.44], "ood_templates": [0.57, 0.58, 0.56]},
    },
    "ci95": {
        "teacher": {"id": [0.95, 0.99], "ood_steps": [0.91, 0.97], "ood_templates": [0.97, 1.0]},
        "untrained": {"id": [0.03, 0.08], "ood_steps": [0.01, 0.04], "ood_templates": [0.02, 0.07]},
        "std_cot": {"id": [0.57, 0.65], "ood_steps": [0.35, 0.45], "ood_templates": [0.5, 0.6]},
        "mcc_kd": {"id": [0.59, 0.67], "ood_steps": [0.39, 0.49], "ood_templates": [0.52, 0.62]},
    },
    "paired": {"mcc_kd - std_cot": {"id": {"difference": 0.02, "ci95": [-0.01, 0.05], "p_value": 0.3}}},
    "counts": {"questions": 100, "samples": 400, "correct": 300, "selected": 250},
}


def _assert_png(path: Path, min_width: int = 400) -> None:
    """The file is a real image of a readable size with something drawn on it."""
    image = imread(path)
    height, width = image.shape[:2]
    assert width >= min_width
    assert height >= 250
    assert image.std() > 0  # something was drawn


def _bars(ax) -> dict[str, list[float]]:
    """Bar heights per legend label, in the order the bars stand."""
    return {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers if isinstance(c, BarContainer)}


def _whiskers(ax, label: str) -> np.ndarray:
    """(low, high) ends of the error bars of the bars labelled ``label``, one row a bar."""
    [bars] = [c for c in ax.containers if isinstance(c, BarContainer) and c.get_label() == label]
    segments = bars.errorbar.lines[2][0].get_segments()
    return np.array([(s[:, 1].min(), s[:, 1].max()) for s in segments])


SPLITS = ["id", "ood_steps", "ood_templates"]
MODELS = ["teacher", "untrained", "std_cot", "mcc_kd"]


def test_plot_accuracy_draws_each_models_accuracy_interval_and_seeds(tmp_path: Path):
    path = tmp_path / "figures" / "accuracy.png"
    fig = plot_accuracy(METRICS, path)
    _assert_png(path)
    [ax] = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == SPLITS
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("test split", "accuracy")
    assert ax.get_title().startswith("test accuracy by split")
    bars = _bars(ax)
    assert list(bars) == MODELS  # one bar per model and split, in the metrics' order
    for model in MODELS:
        assert bars[model] == pytest.approx([METRICS[model][s] for s in SPLITS])
        assert _whiskers(ax, model) == pytest.approx(np.array([METRICS["ci95"][model][s] for s in SPLITS]))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == MODELS
    # The per-seed dots: every seed's accuracy, standing on its model's bar of its split.
    dots = sorted(
        (round(float(x), 6), round(float(y), 6))
        for c in ax.collections
        if isinstance(c, PathCollection)
        for x, y in c.get_offsets()
    )
    centres = {}
    for bars in (c for c in ax.containers if isinstance(c, BarContainer)):
        for split, patch in zip(SPLITS, bars.patches, strict=True):
            centres[bars.get_label(), split] = round(patch.get_x() + patch.get_width() / 2, 6)
    expected = sorted(
        (centres[m, s], round(v, 6))
        for m, splits in METRICS["per_seed"].items()
        for s, vs in splits.items()
        for v in vs
    )
    assert dots == expected


def test_plot_teacher_gap_draws_teacher_minus_student_with_shifted_intervals(tmp_path: Path):
    path = tmp_path / "gap.png"
    fig = plot_teacher_gap(METRICS, path)
    _assert_png(path)
    [ax] = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == SPLITS
    assert ax.get_ylabel() == "teacher accuracy - student accuracy"
    bars = _bars(ax)
    students = [m for m in MODELS if m != "teacher"]
    assert list(bars) == students  # the teacher has no gap to itself
    for student in students:
        teacher = [METRICS["teacher"][s] for s in SPLITS]
        assert bars[student] == pytest.approx([t - METRICS[student][s] for t, s in zip(teacher, SPLITS, strict=True)])
        # teacher - [low, high] = [teacher - high, teacher - low]
        ci = [METRICS["ci95"][student][s] for s in SPLITS]
        shifted = [(t - high, t - low) for t, (low, high) in zip(teacher, ci, strict=True)]
        assert _whiskers(ax, student) == pytest.approx(np.array(shifted))
    assert [list(line.get_ydata()) for line in ax.lines if line.get_linestyle() == "-"] == [[0, 0]]  # the zero line


def _log(steps: int, start: float, consistency: float) -> list[dict]:
    return [
        {"step": s, "cross_entropy": start / (1 + s), "consistency": consistency / (1 + s) if consistency else 0.0}
        for s in range(steps)
    ]


def _curves(ax) -> dict[str, list[np.ndarray]]:
    """Thin (one seed) and thick (mean) lines of each colour, as (steps, values) arrays."""
    out: dict[str, list] = {}
    for line in ax.lines:
        out.setdefault("thick" if line.get_linewidth() > 2 else "thin", []).append(
            (line.get_color(), np.asarray(line.get_xdata()), np.asarray(line.get_ydata()), line.get_label())
        )
    return out


def test_plot_training_curves_unequal_seeds_and_zero_consistency(tmp_path: Path):
    logs = {
        "std_cot": [_log(50, 3.0, 0.0), _log(40, 3.2, 0.0), _log(50, 2.9, 0.0)],
        "mcc_kd": [_log(50, 3.0, 0.5), _log(45, 3.1, 0.6)],
    }
    path = tmp_path / "curves.png"
    fig = plot_training_curves(logs, path)
    _assert_png(path, min_width=800)
    ce_ax, cons_ax = fig.axes[:2]
    assert (ce_ax.get_title(), cons_ax.get_title()) == ("cross-entropy loss", "consistency loss")
    assert ce_ax.get_yscale() == cons_ax.get_yscale() == "log" and ce_ax.get_xlabel() == "training step"

    ce = _curves(ce_ax)
    assert len(ce["thin"]) == 5  # one line per seed run: 3 + 2
    for (_, steps, values, _), run in zip(ce["thin"], [*logs["std_cot"], *logs["mcc_kd"]], strict=True):
        assert steps.tolist() == [r["step"] for r in run]
        assert values == pytest.approx([r["cross_entropy"] for r in run])
    # The mean over seeds, up to the shortest run of each method (40 and 45 steps).
    [(std_colour, std_steps, std_mean, std_label), (mcc_colour, mcc_steps, mcc_mean, mcc_label)] = ce["thick"]
    assert (std_label, mcc_label) == ("std_cot", "mcc_kd") and std_colour != mcc_colour
    assert std_steps.tolist() == list(range(40)) and mcc_steps.tolist() == list(range(45))
    std_expected = np.mean([[r["cross_entropy"] for r in run[:40]] for run in logs["std_cot"]], axis=0)
    assert std_mean == pytest.approx(std_expected)
    mcc_expected = np.mean([[r["cross_entropy"] for r in run[:45]] for run in logs["mcc_kd"]], axis=0)
    assert mcc_mean == pytest.approx(mcc_expected)

    # Std-CoT's consistency is zero throughout: only MCC-KD's curves are on the consistency panel.
    cons = _curves(cons_ax)
    assert {c for c, *_ in cons["thin"] + cons["thick"]} == {mcc_colour}
    [(_, _, cons_mean, label)] = cons["thick"]
    assert label == "mcc_kd"
    assert cons_mean == pytest.approx(np.mean([[r["consistency"] for r in run[:45]] for run in logs["mcc_kd"]], axis=0))
    assert [t.get_text() for t in cons_ax.get_legend().get_texts()] == ["mcc_kd"]


def test_plot_training_curves_without_any_consistency(tmp_path: Path):
    path = tmp_path / "curves.png"
    logs = {"std_cot": [_log(30, 3.0, 0.0), _log(20, 3.0, 0.0)]}
    fig = plot_training_curves(logs, path)
    _assert_png(path, 800)
    ce_ax, cons_ax = fig.axes[:2]
    [(_, steps, mean, label)] = _curves(ce_ax)["thick"]
    assert label == "std_cot" and steps.tolist() == list(range(20))
    assert mean == pytest.approx([3.0 / (1 + s) for s in range(20)])
    assert not cons_ax.lines and [t.get_text() for t in cons_ax.texts] == ["no consistency term"]


def test_plot_sweep_heatmaps_puts_each_cells_accuracy_in_its_place(tmp_path: Path):
    cells = [Cell("t", fmt, level) for fmt in ("plain", "subq") for level in ("1", "3")] + [Cell("u", "plain", "1")]
    accuracy = {"t/plain-1": 0.2, "t/plain-3": 0.4, "t/subq-1": 0.6, "u/plain-1": 0.5}  # t/subq-3 not run
    rows = [
        {"cell": name, "method": method, "accuracy": {"id": {"mean": a + bonus, "ci95": [a + bonus - 0.1, a + bonus]}}}
        for method, bonus in (("std_cot", 0.0), ("mcc_kd", 0.05))
        for name, a in accuracy.items()
    ]
    path = tmp_path / "heatmap_id.png"
    fig = plot_sweep_heatmaps(rows, cells, "id", path, untrained=0.12)
    _assert_png(path)
    assert "on id" in fig.get_suptitle() and "untrained student 0.12" in fig.get_suptitle()
    panels = {ax.get_title(): ax for ax in fig.axes if ax.images}
    assert list(panels) == ["t · std_cot", "t · mcc_kd", "u · std_cot", "u · mcc_kd"]
    for teacher, method, bonus in [("t", "std_cot", 0.0), ("t", "mcc_kd", 0.05)]:
        ax = panels[f"{teacher} · {method}"]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["plain", "subq"]  # formats across
        assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "3"]  # granularities down
        [image] = ax.images
        grid = np.ma.filled(image.get_array(), np.nan)
        assert grid[:, 0] == pytest.approx([0.2 + bonus, 0.4 + bonus])  # plain-1, plain-3
        assert grid[0, 1] == pytest.approx(0.6 + bonus) and np.isnan(grid[1, 1])  # subq-1; subq-3 not run
        assert image.get_clim() == (0, 0.7)  # 0 to the best cell (0.65) rounded up to a tenth
        texts = [t.get_text() for t in ax.texts]
        assert f"{0.6 + bonus:.2f}\n[{0.5 + bonus:.2f}, {0.6 + bonus:.2f}]" in texts and "not run" in texts
    u_grid = np.ma.filled(panels["u · std_cot"].images[0].get_array(), np.nan)
    assert u_grid[0, 0] == pytest.approx(0.5) and np.isnan(u_grid[1:, :]).all() and np.isnan(u_grid[0, 1])
