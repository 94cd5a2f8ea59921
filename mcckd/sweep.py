"""The CoT-factor sweep's figures (arXiv 2502.18001): per-cell data statistics, accuracies with
intervals, the best cell per student method against its runner-up, heatmaps and the report.

A *cell* is one source of rationales: a teacher prompted in one CoT format at one granularity, or a
recorded file labelled with them. Every (cell, method) is trained with each of the method's seeds
and evaluated on every test set. Everything here reads stage folders, so a sweep's report can be
rebuilt from its store without running anything.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mcckd import plots, report, stats
from mcckd.stages import output
from mcckd.store import read_manifest


@dataclass(frozen=True)
class Cell:
    """One source of rationales and the two CoT factors it stands for; ``variant`` names the other
    settings the sweep varies (its ``axes``: ``k=4 alpha=0.1``), empty when it varies none."""

    teacher: str
    cot_format: str
    granularity: str
    recorded: bool = False
    variant: str = ""

    @property
    def name(self) -> str:
        cot = f"{self.teacher}/{self.cot_format}-{self.granularity}"
        return f"{cot} [{self.variant}]" if self.variant else cot


@dataclass
class CellData:
    """The stage folders that made one cell's training set."""

    cell: Cell
    source: Path  # sample or import
    judge: Path
    select: Path
    trainset: Path


@dataclass
class CellRuns:
    """One (cell, method): its training and evaluation folders per seed."""

    cell: Cell
    method: str
    train: dict[int, Path] = field(default_factory=dict)
    evaluate: dict[int, Path] = field(default_factory=dict)


def data_statistics(data: CellData, tokenizer) -> dict:
    """What the cell's data is: rationales kept, their mean length in student tokens, diversity,
    the teacher's accuracy on the questions, and what the rationales cost to generate."""
    source, judged = read_manifest(data.source)["summary"], report.stage_summary(data.judge)
    selected, trainset = report.stage_summary(data.select), report.stage_summary(data.trainset)
    rows = pq.read_table(output("materialize", data.trainset), columns=["rationales"]).column(0).to_pylist()
    texts = [t for group in rows for t in group]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    verdicts = teacher_verdicts(data.judge)
    answered = {qid for qid, verdict in verdicts if verdict == "correct"}
    questions = len({qid for qid, _ in verdicts})
    # A rationale whose question has no usable gold answer says nothing about the teacher.
    gradable = sum(verdict not in ("no_gold_answer", "bad_label") for _, verdict in verdicts)
    correct = sum(verdict == "correct" for _, verdict in verdicts)
    return {
        "cell": data.cell.name,
        "variant": data.cell.variant,
        "teacher": data.cell.teacher,
        "cot_format": data.cell.cot_format,
        "granularity": data.cell.granularity,
        "source": "recorded" if data.cell.recorded else "sampled",
        "questions": questions,
        "rationales": judged["samples"],
        "teacher_accuracy": correct / gradable if gradable else None,
        "ungraded": judged["samples"] - gradable,
        "questions_with_a_correct_rationale": len(answered) / questions if questions else None,
        "kept_rationales": trainset["rationales"],
        "trainset_questions": trainset["questions"],
        "mean_tokens": statistics.fmean(lengths) if lengths else None,
        "diversity_mean_max_similarity": selected["mean_max_similarity"],
        "teacher_tokens_generated": source.get("generated_tokens"),  # None: recorded, nothing generated here
    }


def teacher_verdicts(judge_dir: Path) -> list[tuple[str, str]]:
    """(question, verdict) of every sample, a duplicate taking the verdict of the rationale it repeats:
    the judge sets repeats aside before reading them, but the teacher did write them (terse styles
    repeat themselves most), so leaving them out would skew the teacher's accuracy."""
    rows = pq.read_table(
        output("judge", judge_dir, "judged"), columns=["question_id", "rationale", "verdict"]
    ).to_pylist()
    first = {}
    for r in rows:
        if r["verdict"] != "duplicate":
            first.setdefault((r["question_id"], " ".join(r["rationale"].split())), r["verdict"])
    return [
        (r["question_id"], first.get((r["question_id"], " ".join(r["rationale"].split())), r["verdict"]))
        if r["verdict"] == "duplicate"
        else (r["question_id"], r["verdict"])
        for r in rows
    ]


def run_name(runs: CellRuns) -> str:
    return f"{runs.cell.name} {runs.method}"


def correctness_matrix(runs: CellRuns, test_set: str, seeds: list[int]) -> np.ndarray:
    """(seeds, questions) correctness of one (cell, method) on one test set, questions in file order."""
    return report.aligned(run_name(runs), test_set, [report.correctness(runs.evaluate[s]) for s in seeds])


def results(all_runs: list[CellRuns], test_sets: list[str]) -> list[dict]:
    """One row per (cell, method): accuracy per test set (mean over seeds, sd, interval, per seed)
    and the training time."""
    rows = []
    for runs in all_runs:
        seeds = sorted(runs.evaluate)
        row = {"cell": runs.cell.name, "method": runs.method, "seeds": seeds, "accuracy": {}}
        for name in test_sets:
            matrix = correctness_matrix(runs, name, seeds)
            per_seed = [float(m.mean()) for m in matrix]
            row["accuracy"][name] = {
                "mean": float(matrix.mean()) if matrix.size else 0.0,
                "sd": statistics.stdev(per_seed) if len(per_seed) > 1 else None,
                "ci95": list(stats.accuracy_interval(matrix)),
                "per_seed": per_seed,
            }
        trained = [report.stage_summary(d) for d in runs.train.values()]
        row["train_seconds"] = sum(t["seconds"] for t in trained)
        shares = [t["consistency_share"] for t in trained if "consistency_share" in t]
        row["consistency_share"] = statistics.fmean(shares) if shares else None
        rows.append(row)
    return rows


def result_rows(rows: list[dict]) -> list[dict]:
    """The results flattened for a table artifact: one column per test set."""
    out = []
    for r in rows:
        flat = {"cell": r["cell"], "method": r["method"], "seeds": len(r["seeds"])}
        for name, a in r["accuracy"].items():
            flat[name] = f"{a['mean']:.3f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]"
        out.append(flat | {"train_seconds": round(r["train_seconds"])})
    return out


def best_cells(all_runs: list[CellRuns], rows: list[dict], test_sets: list[str]) -> list[dict]:
    """Per method and test set: the best cell, the runner-up, and the paired comparison of the two on
    the seeds both ran (the same questions)."""
    out = []
    by_key = {(r.cell.name, r.method): r for r in all_runs}
    for method in dict.fromkeys(r["method"] for r in rows):
        ranked_rows = [r for r in rows if r["method"] == method]
        for name in test_sets:
            ranked = sorted(ranked_rows, key=lambda r, n=name: -r["accuracy"][n]["mean"])
            best = ranked[0]
            entry = {"method": method, "test_set": name, "best": best["cell"], "accuracy": best["accuracy"][name]}
            if len(ranked) > 1:
                second = ranked[1]
                a, b = by_key[best["cell"], method], by_key[second["cell"], method]
                common = sorted(set(a.evaluate) & set(b.evaluate))
                entry["runner_up"] = second["cell"]
                entry["runner_up_accuracy"] = second["accuracy"][name]
                entry["paired"] = stats.paired_comparison(
                    correctness_matrix(a, name, common), correctness_matrix(b, name, common)
                )
            out.append(entry)
    return out


def recommendation(best: list[dict], rank_on: str) -> list[str]:
    """Plain words per method: which cell to distil with, judged on ``rank_on``, and whether the
    data can tell it from the runner-up."""
    lines = []
    for entry in (e for e in best if e["test_set"] == rank_on):
        acc = entry["accuracy"]
        head = f"For {entry['method']}, distil with {entry['best']} ({acc['mean']:.3f} on {rank_on}"
        if "paired" not in entry:
            lines.append(head + "; the only cell).")
            continue
        p = entry["paired"]
        comparison = stats.describe_comparison(f"{entry['best']} - {entry['runner_up']}", rank_on, p)
        if p["significant"]:
            advice = f"it is the better supervision for this student. {comparison}"
        else:
            advice = (
                f"but it is not clearly better than {entry['runner_up']}: choose either (the cheaper one), "
                f"or add seeds or test questions to separate them. {comparison}"
            )
        lines.append(f"{head}): {advice}")
    return lines


def heatmap_file(test_set: str) -> str:
    return f"heatmap_{test_set}.png"


def console_summary(summary: dict) -> str:
    """What a sweep prints when it ends: the data per cell, the students, the best cells, the advice."""
    parts = [data_table(summary["data"])]
    if summary["results"]:
        parts += [accuracy_table(summary["results"], summary["test_sets"]), best_table(summary["best"])]
    return "\n\n".join(["", *parts, "\n".join(summary["recommendation"] + summary["left_out"])])


def data_table(stats_rows: list[dict]) -> str:
    header = (
        "| cell | source | questions | teacher accuracy | kept rationales | mean tokens | diversity "
        "| teacher tokens |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r['cell']} | {r['source']} | {r['questions']} | {report.fmt(r['teacher_accuracy'])} "
        f"| {r['kept_rationales']} "
        f"| {report.fmt(r['mean_tokens'], 1)} | {report.fmt(r['diversity_mean_max_similarity'])} "
        f"| {report.fmt(r['teacher_tokens_generated'])} |"
        for r in stats_rows
    ]
    return "\n".join([header, *lines])


def accuracy_table(rows: list[dict], test_sets: list[str]) -> str:
    lines = [
        "| cell | method | seeds | " + " | ".join(test_sets) + " | train s |",
        "|---|---|---:|" + "---:|" * (len(test_sets) + 1),
    ]
    for r in rows:
        cells = []
        for name in test_sets:
            a = r["accuracy"][name]
            spread = f" ± {a['sd']:.3f}" if a["sd"] is not None else ""
            cells.append(f"{a['mean']:.3f}{spread} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]")
        lines.append(
            f"| {r['cell']} | {r['method']} | {len(r['seeds'])} | "
            + " | ".join(cells)
            + f" | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def reference_line(references: dict[str, dict[str, float]], test_sets: list[str]) -> str:
    """What every cell's students are read against: the untrained base (and local teachers), one run each."""
    if not references:
        return "No reference model was evaluated."
    models = "; ".join(
        f"{model}: " + ", ".join(f"{name} {acc[name]:.3f}" for name in test_sets if name in acc)
        for model, acc in references.items()
    )
    return f"On the same questions, not trained here: {models}."


def best_table(best: list[dict]) -> str:
    lines = [
        "| method | test set | best cell | accuracy | runner-up | accuracy | difference [95% interval] | p |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for e in best:
        if "paired" in e:
            p = e["paired"]
            diff = f"{p['difference']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
            tail = f"{e['runner_up']} | {e['runner_up_accuracy']['mean']:.3f} | {diff} | {p['p_value']:.3g}"
        else:
            tail = "— | | | "
        lines.append(f"| {e['method']} | {e['test_set']} | {e['best']} | {e['accuracy']['mean']:.3f} | {tail} |")
    return "\n".join(lines)


def summarize(all_runs: list[CellRuns], references: dict[str, Path], test_sets: list[str], rank_on: str) -> dict:
    """The sweep's figures: per (cell, method) accuracy, the best cells against their runner-ups,
    the reference models' accuracy (``references``: name -> evaluate folder), and the advice."""
    results_ = results(all_runs, test_sets)
    best = best_cells(all_runs, results_, test_sets)
    return {
        "test_sets": test_sets,
        "rank_on": rank_on,
        "results": results_,
        "best": best,
        "references": {
            name: {s: float(ok.mean()) for s, (_, ok, _) in report.correctness(folder).items()}
            for name, folder in references.items()
        },
        "recommendation": recommendation(best, rank_on),
    }


def write_report(report_dir: Path, plan: list[dict], summary: dict, cells: list[Cell]) -> Path:
    """sweep.json, the heatmaps (one per test set) and sweep.md."""
    report_dir.mkdir(parents=True, exist_ok=True)
    untrained = summary["references"].get(report.UNTRAINED, {})
    if summary["results"]:
        for name in summary["test_sets"]:
            path = report_dir / heatmap_file(name)
            plots.plot_sweep_heatmaps(summary["results"], cells, name, path, untrained.get(name))
    (report_dir / "sweep.json").write_text(json.dumps(summary | {"plan": plan}, indent=2, default=str))
    test_sets = summary["test_sets"]
    parts = ["# CoT-factor sweep", ""]
    if summary.get("warnings"):
        parts += ["## Warnings", "", *[f"- {line}" for line in summary["warnings"]], ""]
    parts += ["## Recommendation", ""]
    parts += [f"- {line}" for line in summary["recommendation"]] or ["No student was trained: data statistics only."]
    parts += ["", "## Data per cell", "", data_table(summary["data"]), ""]
    parts += [
        "Teacher accuracy: the share of the cell's gradable rationales (their question has a gold answer) "
        "the judge read as correct. Mean tokens: the kept "
        "rationales in the student's tokens. Diversity: mean of each kept rationale's highest word-trigram "
        "Jaccard similarity to the others of its question (lower is more diverse). Teacher tokens: generated "
        "for this cell (n/a: recorded data).",
        "",
    ]
    if summary["results"]:
        parts += ["## Students", "", accuracy_table(summary["results"], test_sets), ""]
        parts += ["Mean over seeds (± sd over seeds) [95% interval: Wilson for one seed, bootstrap over seeds "]
        parts += ["and questions for several]; an unanswered question counts as wrong.", ""]
        parts += [reference_line(summary["references"], test_sets), ""]
        parts += ["## Best cell per method, against the runner-up", "", best_table(summary["best"]), ""]
        for name in test_sets:
            parts += [f"![{name}]({heatmap_file(name)})", ""]
    if summary["left_out"]:
        parts += ["## Left out", ""] + [f"- {item}" for item in summary["left_out"]] + [""]
    parts += ["## Plan", "", plan_table(plan)]
    path = report_dir / "sweep.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def plan_table(plan: list[dict]) -> str:
    lines = ["| stage | what | fingerprint | state |", "|---|---|---|---|"]
    lines += [f"| {p['stage']} | {p['what']} | `{p['fingerprint']}` | {p['state']} |" for p in plan]
    return "\n".join(lines)
