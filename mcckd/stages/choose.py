"""Stage 5b, choose (after train and the validation evaluations): keep the checkpoint that answers the
validation questions best, as the MCC-KD authors' script keeps its best epoch on dev.

In: the train stage's ``checkpoints`` folder and one evaluation per checkpoint, named by it (its
predictions: ``--in epoch-1=runs/store/evaluate/FP/predictions.parquet``), each scored on the
``split`` the holdout stage set aside.
Out (``STAGE.outputs``): the chosen checkpoint as a model folder (hard links to the train stage's
files: no copy of the weights), the table of every checkpoint's validation accuracy, and its plot.
Highest accuracy wins; a tie goes to the earliest checkpoint (fewer passes over the data). The
test sets are never read here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import Field

from data_schemas import CHECKPOINTS, PREDICTIONS, InputError, read_table
from mcckd.settings import Settings
from mcckd.stages.spec import Output, StageSpec


class ChooseSettings(Settings):
    split: str = Field("validation", description="the evaluated set that decides (never a test set)")


STAGE = StageSpec(
    name="choose",
    settings=ChooseSettings,
    version=1,
    inputs=("checkpoints",),
    outputs={
        "model": Output("model", description="the chosen checkpoint: weights and tokenizer"),
        "checkpoint_scores": Output("validation.parquet", CHECKPOINTS, "every checkpoint's validation accuracy"),
        "plot": Output("validation.png", description="validation accuracy by checkpoint, the chosen one marked"),
    },
    evaluations=True,
)


def checkpoint_order(name: str) -> tuple[int, str]:
    number = re.search(r"(\d+)$", name)
    return (int(number.group(1)) if number else -1, name)


def best(rows: list[dict]) -> dict:
    """The most accurate checkpoint; among equals the earliest (rows are in checkpoint order)."""
    return max(enumerate(rows), key=lambda ir: (ir[1]["accuracy"], -ir[0]))[1]


def scores(name: str, predictions_file: Path, split: str) -> dict:
    """One checkpoint's validation figures, from its evaluate stage's predictions."""
    predictions = read_table(predictions_file, PREDICTIONS)
    rows = [r for r in predictions.select(["split", "correct"]).to_pylist() if r["split"] == split]
    if not rows:
        raise InputError(
            f"{predictions_file}: checkpoint {name!r} has no {split!r} question to be chosen by (the holdout "
            "stage held out none: raise validation.fraction or give more questions with gold answers)"
        )
    correct = sum(r["correct"] for r in rows)
    return {"checkpoint": name, "correct": correct, "questions": len(rows), "accuracy": correct / len(rows)}


def link_model(source: Path, target: Path) -> None:
    """The chosen model folder, file by file as hard links (same store, no copy)."""
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest)


def plot(rows: list[dict], chosen: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([r["checkpoint"] for r in rows], [r["accuracy"] for r in rows], "o-", label="validation accuracy")
    pick = next(r for r in rows if r["checkpoint"] == chosen)
    ax.plot([chosen], [pick["accuracy"]], "r*", markersize=14, label=f"kept: {chosen}")
    ax.set_ylim(0, max(1e-3, max(r["accuracy"] for r in rows)) * 1.15)
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(settings: ChooseSettings, out_dir: Path, checkpoints: Path, **evaluations: Path) -> dict:
    saved = {p.name for p in Path(checkpoints).iterdir() if p.is_dir()} if Path(checkpoints).is_dir() else set()
    if not evaluations:
        raise InputError(f"{checkpoints}: choose needs one evaluation per checkpoint (--in epoch-1=EVALUATE_DIR)")
    unknown = sorted(set(evaluations) - saved)
    if unknown:
        raise InputError(f"{checkpoints}: no checkpoint {unknown} (it holds {sorted(saved)})")
    rows = [scores(name, Path(evaluations[name]), settings.split) for name in sorted(evaluations, key=checkpoint_order)]
    chosen = best(rows)["checkpoint"]
    rows = [{**r, "chosen": r["checkpoint"] == chosen} for r in rows]
    STAGE.write(out_dir, "checkpoint_scores", rows)
    link_model(Path(checkpoints) / chosen, STAGE.path(out_dir))
    plot(rows, chosen, STAGE.path(out_dir, "plot"))
    return {
        "chosen": chosen,
        "validation_accuracy": {r["checkpoint"]: r["accuracy"] for r in rows},
        "validation_questions": rows[0]["questions"],
        "split": settings.split,
        "trained_checkpoints": len(saved),
        "source": str(Path(checkpoints) / chosen),
    }
