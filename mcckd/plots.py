"""PNG figures for the report, so accuracies, their uncertainty and training behaviour can be read at a glance.

All functions take the run's metrics dict (or training logs), write one PNG and return its matplotlib Figure (closed
to pyplot, its axes and artists still readable: what the tests check the plotted data on). The Agg backend is chosen
inside each function, so importing this module never touches a display or the caller's backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# metrics.json keys that are not models (see mcckd.report.build_metrics).
NOT_MODELS = {"per_seed", "ci95", "paired", "counts", "unanswered", "seeds", "warnings", "checkpoints", "authors_split"}
_DPI = 110


def _pyplot():
    """pyplot on the file-only backend: the pipeline runs on headless machines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> Figure:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return fig


def model_names(metrics: dict) -> list[str]:
    """Model names in the metrics' own order (every key that is not a bookkeeping section)."""
    return [m for m in metrics if m not in NOT_MODELS]


def model_colours(names: list[str]) -> dict[str, str]:
    """One colour per model, the same in every figure of a report (by its place in ``names``)."""
    cycle = _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def set_order(name: str) -> tuple[bool, str]:
    """Sort key of test sets: "id" first, then the out-of-distribution ones by name."""
    return name != "id", name


def test_set_names(metrics: dict) -> list[str]:
    """Test sets of all models, in :func:`set_order`."""
    return sorted({s for m in model_names(metrics) for s in metrics[m]}, key=set_order)


def _errors(metrics: dict, model: str, splits: list[str], centre: np.ndarray) -> np.ndarray:
    """Asymmetric error-bar lengths (2, splits) around `centre` from the model's ci95; zero where none is given."""
    ci = metrics.get("ci95", {}).get(model, {})
    low = np.array([ci.get(s, [np.nan, np.nan])[0] for s in splits], dtype=float)
    high = np.array([ci.get(s, [np.nan, np.nan])[1] for s in splits], dtype=float)
    return np.nan_to_num(np.clip(np.vstack([centre - low, high - centre]), 0, None))


def plot_accuracy(metrics: dict, path: Path) -> Figure:
    """Grouped bars: one group per split, one bar per model, 95% CI error bars and per-seed dots."""
    plt = _pyplot()
    models, splits = model_names(metrics), test_set_names(metrics)
    x = np.arange(len(splits))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(splits) * len(models) + 2), 4.5))
    per_seed = metrics.get("per_seed", {})
    colours = model_colours(models)
    for i, model in enumerate(models):
        acc = np.array([metrics[model].get(s, np.nan) for s in splits], dtype=float)
        pos = x - 0.4 + width * (i + 0.5)
        yerr = _errors(metrics, model, splits, acc)
        ax.bar(pos, acc, width, yerr=yerr, capsize=3, label=model, color=colours[model])
        for j, split in enumerate(splits):
            seeds = per_seed.get(model, {}).get(split, [])
            ax.scatter(np.full(len(seeds), pos[j]), seeds, s=12, color="black", zorder=3)
    ax.set_xticks(x, splits)
    ax.set_ylim(0, 1.02)  # a little above 1 so whiskers reaching 1.0 keep their caps
    ax.set_xlabel("test split")
    ax.set_ylabel("accuracy")
    ax.set_title("test accuracy by split (bars: mean, whiskers: 95% CI, dots: seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_training_curves(
    logs: dict[str, list[list[dict]]], path: Path, colours: dict[str, str] | None = None
) -> Figure:
    """Cross-entropy and consistency loss per step: a thin line per seed, a thick line for the mean over seeds.

    ``colours`` (from :func:`model_colours`) keeps each method's colour from the accuracy figure.
    """
    plt = _pyplot()
    fig, (ce_ax, cons_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    colours = colours or model_colours(list(logs))
    any_consistency = False
    for method, seeds in logs.items():
        colour = colours[method]
        runs = [r for r in seeds if r]
        if not runs:
            continue
        shortest = min(len(r) for r in runs)
        steps = [row["step"] for row in runs[0][:shortest]]
        for key, ax in (("cross_entropy", ce_ax), ("consistency", cons_ax)):
            curves = [np.array([row[key] for row in run], dtype=float) for run in runs]
            if key == "consistency":
                if not any(np.any(c != 0) for c in curves):
                    continue
                any_consistency = True
            for run, curve in zip(runs, curves, strict=True):
                ax.plot([row["step"] for row in run], curve, color=colour, linewidth=0.8, alpha=0.35)
            mean = np.mean([c[:shortest] for c in curves], axis=0)
            ax.plot(steps, mean, color=colour, linewidth=2.2, label=method)
    ce_ax.set_title("cross-entropy loss")
    cons_ax.set_title("consistency loss")
    panels = (ce_ax, cons_ax) if any_consistency else (ce_ax,)
    for ax in panels:
        ax.set_xlabel("training step")
        ax.set_ylabel("loss (log scale)")
        ax.set_yscale("log", nonpositive="mask")
        if ax.lines:
            ax.legend()
    if not any_consistency:
        cons_ax.set_xticks([])
        cons_ax.set_yticks([])
        cons_ax.text(0.5, 0.5, "no consistency term", ha="center", va="center", transform=cons_ax.transAxes)
    fig.suptitle("training curves (thin: one seed, thick: mean over seeds)")
    return _save(fig, path)


def plot_validation(checkpoints: dict, path: Path, colours: dict[str, str] | None = None) -> Figure:
    """Validation accuracy after each epoch, a line per (method, seed), the kept checkpoint starred:
    ``checkpoints`` is the metrics' section of that name."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    colours = colours or model_colours(list(checkpoints))
    for method, seeds in checkpoints.items():
        for i, run in enumerate(seeds.values()):
            names = list(run["validation_accuracy"])
            epochs = [int(n.rsplit("-", 1)[-1]) for n in names]
            accuracy = list(run["validation_accuracy"].values())
            ax.plot(epochs, accuracy, "o-", color=colours[method], alpha=0.8, label=method if i == 0 else None)
            kept = names.index(run["chosen"])
            ax.plot([epochs[kept]], [accuracy[kept]], "*", color=colours[method], markersize=15, markeredgecolor="k")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("checkpoint selection (star: kept; a line per seed)")
    return _save(fig, path)


def plot_teacher_gap(metrics: dict, path: Path, teacher: str = "teacher") -> Figure:
    """Teacher minus student accuracy per split, with each student's 95% CI shifted onto the gap."""
    plt = _pyplot()
    students = [m for m in model_names(metrics) if m != teacher]
    splits = test_set_names(metrics)
    x = np.arange(len(splits))
    width = 0.8 / max(len(students), 1)
    top = np.array([metrics.get(teacher, {}).get(s, np.nan) for s in splits], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(splits) * len(students) + 2), 4.5))
    colours = model_colours(model_names(metrics))
    for i, student in enumerate(students):
        acc = np.array([metrics[student].get(s, np.nan) for s in splits], dtype=float)
        # teacher - [low, high] = [teacher - high, teacher - low]: the error lengths swap sides.
        below, above = _errors(metrics, student, splits, acc)
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            top - acc,
            width,
            yerr=[above, below],
            capsize=3,
            label=student,
            color=colours[student],
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, splits)
    ax.set_xlabel("test split")
    ax.set_ylabel(f"{teacher} accuracy - student accuracy")
    ax.set_title(f"{teacher} - student accuracy gap (whiskers: student's 95% CI)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_sweep_heatmaps(
    rows: list[dict], cells: list, test_set: str, path: Path, untrained: float | None = None
) -> Figure:
    """Granularity x format accuracy of a CoT-factor sweep, one panel per (teacher, variant, method); a cell
    not run is blank. ``rows`` are ``mcckd.sweep.results`` rows, ``cells`` its ``Cell`` objects,
    ``untrained`` the base student's accuracy (in the title). The colour scale runs from 0 to the
    best cell rounded up to a tenth, shared by the panels: a weak student's cells still differ in colour."""
    plt = _pyplot()
    teachers = list(dict.fromkeys((c.teacher, c.variant) for c in cells))  # a row of panels each
    methods = list(dict.fromkeys(r["method"] for r in rows))
    formats = list(dict.fromkeys(c.cot_format for c in cells))
    levels = sorted(dict.fromkeys(c.granularity for c in cells), key=_level_order)
    acc = {(r["cell"], r["method"]): r["accuracy"][test_set] for r in rows}
    top = max(0.1, math.ceil(10 * max((a["mean"] for a in acc.values()), default=1.0)) / 10)
    fig, axes = plt.subplots(
        len(teachers),
        len(methods),
        figsize=(1.0 + 1.6 * len(formats) * len(methods), 0.8 + 1.1 * len(levels) * len(teachers)),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for i, (teacher, variant) in enumerate(teachers):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            grid = np.full((len(levels), len(formats)), np.nan)
            for c in cells:
                if (c.teacher, c.variant) == (teacher, variant) and (c.name, method) in acc:
                    a = acc[c.name, method]
                    y, x = levels.index(c.granularity), formats.index(c.cot_format)
                    grid[y, x] = a["mean"]
                    low, high = a["ci95"]
                    ink = "white" if a["mean"] < 0.6 * top else "black"  # readable on viridis' dark and light ends
                    label = f"{a['mean']:.2f}\n[{low:.2f}, {high:.2f}]"
                    ax.text(x, y, label, ha="center", va="center", fontsize=8, color=ink)
            for y, x in zip(*np.nonzero(np.isnan(grid)), strict=True):
                ax.text(x, y, "not run", ha="center", va="center", fontsize=8, color="grey")
            image = ax.imshow(grid, vmin=0, vmax=top, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(formats)), formats)
            ax.set_yticks(range(len(levels)), levels)
            ax.set_xlabel("CoT format")
            ax.set_ylabel("granularity")
            ax.set_title(" · ".join(x for x in (teacher, variant, method) if x), fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=f"accuracy on {test_set}")
    base = "" if untrained is None else f"; untrained student {untrained:.2f}"
    fig.suptitle(f"student accuracy on {test_set} by CoT supervision (mean over seeds [95% interval]{base})")
    return _save(fig, path)


def _level_order(level: str) -> tuple[int, float | str]:
    try:
        return 0, float(level)
    except ValueError:
        return 1, level
