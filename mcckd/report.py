"""What a person reads after a run: metrics.json, report.md and a terminal table, built from the
stage folders alone (so a report can be rebuilt from any store without re-running anything).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from mcckd.store import read_manifest


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def stage_summary(out_dir: Path) -> dict:
    return read_manifest(out_dir)["summary"]


def verdict_counts(judge_dir: Path) -> dict[str, int]:
    return dict(Counter(pq.read_table(judge_dir / "judged.parquet", columns=["verdict"]).column(0).to_pylist()))


def rejection_counts(*stage_dirs: Path) -> dict[str, int]:
    counts: Counter = Counter()
    for d in stage_dirs:
        for row in pq.read_table(d / "rejections.parquet", columns=["stage", "reason"]).to_pylist():
            counts[f"{row['stage']}: {row['reason']}"] += 1
    return dict(counts)


def build_metrics(questions: int, sample_dir: Path, judge_dir: Path, select_dir: Path, evals: dict[str, Path]) -> dict:
    """The run's headline figures, shaped as the demo's metrics.json contract."""
    metrics: dict = {name: json.loads((d / "accuracy.json").read_text()) for name, d in evals.items()}
    metrics["counts"] = {
        "questions": questions,
        "samples": stage_summary(sample_dir)["samples"],
        "correct": stage_summary(judge_dir)["correct"],
        "selected": stage_summary(select_dir)["selected"],
    }
    return metrics


def accuracy_table(metrics: dict) -> str:
    """Markdown table: one row per model, one column per test split."""
    models = [m for m in metrics if m != "counts"]
    splits = sorted({s for m in models for s in metrics[m]}, key=lambda s: (s != "id", s))
    lines = ["| model | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(f"{metrics[m].get(s, float('nan')):.3f}" for s in splits) + " |")
    return "\n".join(lines)


def counts_table(metrics: dict) -> str:
    c = metrics["counts"]
    return "\n".join(
        [
            "| questions | samples drawn | judged correct | selected |",
            "|---:|---:|---:|---:|",
            f"| {c['questions']} | {c['samples']} | {c['correct']} | {c['selected']} |",
        ]
    )


def sample_rationales(select_dir: Path, limit: int = 2) -> str:
    """A few selected rationales of one question each, to see what the student learns from."""
    rows = pq.read_table(select_dir / "selected.parquet", columns=["question_id", "question", "rationale"]).to_pylist()
    out, seen = [], []
    for r in rows:
        if r["question_id"] not in seen:
            if len(seen) == limit:
                break
            seen.append(r["question_id"])
            out.append(f"\n**{r['question']}**\n")
        out.append(f"- {r['rationale']}")
    return "\n".join(out)


def write_report(
    report_dir: Path,
    metrics: dict,
    stage_dirs: dict[str, Path],
    train_dirs: dict[str, Path],
) -> Path:
    """metrics.json, report.md and the loss curves, in ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    timings = "\n".join(
        f"| {name} | `{d.name}` | {read_manifest(d)['seconds']:.1f} |" for name, d in stage_dirs.items()
    )
    rejections = rejection_counts(stage_dirs["judge"], stage_dirs["select"], *train_dirs.values())
    losses = []
    for name, d in train_dirs.items():
        shutil.copyfile(d / "loss.png", report_dir / f"loss_{name}.png")
        s = stage_summary(d)
        best = s.get("best_step") or "last"
        losses.append(
            f"| {name} | {s['steps']} | {s['final_cross_entropy']:.4f} | {s.get('dev_questions', 0)} | {best} "
            f"| {s['seconds']:.0f} |"
        )
    select = stage_summary(stage_dirs["select"])
    text = (
        f"""# Distillation report

## Accuracy (greedy decoding; an unanswered question counts as wrong)

{accuracy_table(metrics)}

## Data

{counts_table(metrics)}

Selection outcomes per question: {", ".join(f"{k} {v}" for k, v in sorted(select["outcomes"].items()))}.
In questions with two or more kept rationales, the mean of each one's highest word-trigram
Jaccard similarity to the others kept: {_fmt(select["mean_max_similarity"])}.

| rejection (stage: reason) | rationales |
|---|---:|
"""
        + "\n".join(f"| {k} | {v} |" for k, v in sorted(rejections.items()))
        + f"""

## Training

| student | steps | final cross-entropy | dev questions | kept step | seconds |
|---|---:|---:|---:|---:|---:|
{chr(10).join(losses)}

{chr(10).join(f"![{n}](loss_{n}.png)" for n in train_dirs)}

## Stages (output folder = fingerprint)

| stage | folder | seconds when computed |
|---|---|---:|
{timings}

## Selected rationales (examples)
{sample_rationales(stage_dirs["select"])}
"""
    )
    path = report_dir / "report.md"
    path.write_text(text)
    return path
