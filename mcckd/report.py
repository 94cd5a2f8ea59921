"""What a person reads after a run: metrics.json, report.md with its plots, and a terminal table,
built from the stage folders alone (so a report can be rebuilt from any store without re-running).

Every accuracy carries a 95% interval (Wilson for one run; a bootstrap over seeds and questions for
several), and every student method is compared with the baseline on the same questions and seeds
(paired bootstrap over seeds and questions: interval and p-value): see ``mcckd.stats``.
"""

from __future__ import annotations

import base64
import json
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mcckd import plots, stats
from mcckd.decontaminate import gram_name
from mcckd.environment import describe
from mcckd.stages import output
from mcckd.stages.spec import LEDGER
from mcckd.store import read_manifest

PLOTS = ("accuracy.png", "training_curves.png", "teacher_gap.png")
VALIDATION_PLOT = "checkpoint_selection.png"  # with a validation split
UNTRAINED = "untrained"  # the reference model every flow evaluates: the student's base, as its students are asked
EvalDirs = dict[str, dict[int | None, Path]]  # model -> seed (None: not a trained student) -> evaluate folder


def fmt(x: float | int | None, digits: int = 3) -> str:
    """A table figure: floats to ``digits`` places, counts as they are, a missing one as "n/a"."""
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def stage_summary(out_dir: Path) -> dict:
    return read_manifest(out_dir)["summary"]


def stage_line(label: str, out_dir: Path, cached: bool) -> str:
    """One console line for a finished stage: what it produced, its time, whether it was reused."""
    manifest = read_manifest(out_dir)
    s = manifest["summary"]
    if "chosen" in s:
        what = f"kept {s['chosen']}, validation " + ", ".join(
            f"{name} {acc:.3f}" for name, acc in s["validation_accuracy"].items()
        )
    elif "accuracy" in s:
        what = ", ".join(f"{split} {acc:.3f}" for split, acc in s["accuracy"].items())
    elif "steps" in s:
        what = f"{s['steps']} steps, final cross-entropy {s['final_cross_entropy']:.3f}"
    elif "generated_tokens" in s:
        what = f"{s['samples']} samples, {s['generated_tokens']} tokens"
    elif "rows_in" in s:
        what = f"{s['rows_in']} rows in, {s['rows_out']} out, {s['rejected']} rejected"
    else:
        what = ", ".join(f"{k} {v}" for k, v in s.items() if isinstance(v, int | float))
    when = "cached" if cached else f"{manifest['seconds']:.0f} s"
    return f"{label}: {what} ({when}; {out_dir})"


def verdict_counts(judge_dir: Path) -> dict[str, int]:
    return dict(Counter(pq.read_table(output("judge", judge_dir, "judged"), columns=["verdict"]).column(0).to_pylist()))


def verdict_examples(judge_dir: Path, per_verdict: int = 2, width: int = 300) -> list[dict]:
    """The first few judged rationales of each verdict, to read in the UI beside the counts."""
    columns = ["verdict", "question", "answer", "predicted_answer", "rationale"]
    counts: Counter = Counter()
    examples = []
    for row in pq.read_table(output("judge", judge_dir, "judged"), columns=columns).to_pylist():
        if counts[row["verdict"]] < per_verdict:
            counts[row["verdict"]] += 1
            text = row["rationale"] if len(row["rationale"]) <= width else row["rationale"][:width] + "…"
            examples.append(
                {
                    "verdict": row["verdict"],
                    "question": row["question"],
                    "gold": row["answer"],
                    "read": row["predicted_answer"],
                    "rationale": text,
                }
            )
    return examples


def rejection_counts(*stage_dirs: Path) -> dict[str, int]:
    counts: Counter = Counter()
    for d in stage_dirs:
        for row in pq.read_table(d / LEDGER.file, columns=["stage", "reason"]).to_pylist():
            counts[f"{row['stage']}: {row['reason']}"] += 1
    return dict(counts)


def data_counts(
    questions: int, sample_dir: Path, judge_dir: Path, select_dir: Path, decontaminate_dir: Path | None = None
) -> dict:
    """How many questions, samples, correct and selected rationales; with a decontaminate folder, also
    the selected rationales it removed (``contaminated``) and the ones left to train on."""
    sampled = stage_summary(sample_dir)
    counts = {
        "questions": questions,
        "samples": sampled["samples"],
        "correct": stage_summary(judge_dir)["correct"],
        "selected": stage_summary(select_dir)["selected"],
    }
    if decontaminate_dir is not None:
        clean = stage_summary(decontaminate_dir)
        counts |= {"contaminated": clean["rejected"], "trained_on": clean["rows_out"]}
    generated = sampled.get("generated_tokens")  # sampled, not imported: what it cost
    if generated:
        counts |= {
            "generated_tokens": generated,
            "correct_per_1k_tokens": round(1000 * counts["correct"] / generated, 3),
        }
    return counts


def contamination_lines(decontaminate_dir: Path, label: str = "decontaminate") -> list[str]:
    """One console line per test set that overlapped the training questions (none when clean)."""
    s = stage_summary(decontaminate_dir)
    return [
        f"{label}: {count} training {'question overlaps' if count == 1 else 'questions overlap'} test set "
        f"{name!r} ({gram_name(s['ngram'])}); removed from training"
        for name, count in s["contaminated"].items()
        if count
    ]


def training_set_warnings(trainset_dir: Path, consistency_methods: list[str], min_rationales: int) -> list[str]:
    """One plain-English line per reason the students' figures will not mean much, read from the
    materialize stage's summary before any training: fewer than ``min_rationales`` rationales, and,
    for the methods in ``consistency_methods`` (alpha > 0), no question with two rationales to
    compare. Empty when the training set is fine."""
    s = stage_summary(trainset_dir)
    rationales, questions = s["rationales"], s["questions"]
    warnings = []
    if rationales < min_rationales:
        warnings.append(
            f"the training set has {_count(rationales, 'rationale')} of {_count(questions, 'question')}, fewer "
            f"than min_rationales={min_rationales}: the students' figures will not mean much; give the teachers "
            "more questions or samples per question, a stronger teacher, or rationales you already have "
            "(recorded), and see the judge, select and decontaminate lines for where rationales were lost"
        )
    # Every question in the training set has at least one rationale: more rationales than questions
    # if and only if some question has two or more.
    if consistency_methods and rationales <= questions:
        names = ", ".join(consistency_methods)
        they = "it trains" if len(consistency_methods) == 1 else "they train"
        warnings.append(
            f"{names}: no question in the training set has two rationales, so MCC-KD's consistency term is "
            f"zero and {they} as Std-CoT; keep two or more correct rationales a question (select k >= 2, "
            "enough samples per question)"
        )
    return warnings


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def correctness(eval_dir: Path) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    """Per test set: question ids in file order, whether each was answered correctly, and answered at all."""
    table = pq.read_table(
        output("evaluate", eval_dir, "predictions"), columns=["split", "question_id", "correct", "answered"]
    )
    out: dict[str, tuple[list, list, list]] = {}
    for row in table.to_pylist():
        ids, ok, answered = out.setdefault(row["split"], ([], [], []))
        ids.append(row["question_id"])
        ok.append(row["correct"])
        answered.append(row["answered"])
    return {s: (ids, np.array(ok, dtype=bool), np.array(a, dtype=bool)) for s, (ids, ok, a) in out.items()}


def build_metrics(evals: EvalDirs, counts: dict, baseline: str | None = None) -> dict:
    """The run's figures, shaped as the demo's metrics.json contract.

    ``{model: {set: mean accuracy over seeds}}`` for every model, then ``per_seed`` (students),
    ``ci95`` (every model), ``paired`` (each method minus ``baseline`` on the seeds both ran, then each
    method minus the untrained base, its every seed against the base's one run),
    ``unanswered`` (share of questions without an answer, mean over seeds), ``seeds`` and ``counts``.
    """
    runs = {model: {seed: correctness(d) for seed, d in dirs.items()} for model, dirs in evals.items()}
    metrics: dict = {}
    per_seed: dict = {}
    ci95: dict = {}
    unanswered: dict = {}
    for model, by_seed in runs.items():
        seeds = sorted(by_seed, key=lambda s: -1 if s is None else s)
        sets = sorted({s for r in by_seed.values() for s in r}, key=plots.set_order)
        metrics[model], ci95[model], unanswered[model] = {}, {}, {}
        for name in sets:
            matrix = aligned(model, name, [by_seed[seed] for seed in seeds])
            metrics[model][name] = float(matrix.mean()) if matrix.size else 0.0
            ci95[model][name] = list(stats.accuracy_interval(matrix))
            answered = np.stack([by_seed[seed][name][2] for seed in seeds])
            unanswered[model][name] = float(1 - answered.mean()) if answered.size else 0.0
        if seeds != [None]:
            per_seed[model] = {name: [float(by_seed[s][name][1].mean()) for s in seeds] for name in sets}
    paired: dict = {}
    if baseline in runs:
        for model in per_seed:
            common = sorted(set(runs[model]) & set(runs[baseline]))
            if model == baseline or not common:
                continue
            key = f"{model} - {baseline}"
            paired[key] = {}
            for name in metrics[model]:
                a = aligned(model, name, [runs[model][s] for s in common])
                b = aligned(baseline, name, [runs[baseline][s] for s in common])
                paired[key][name] = stats.paired_comparison(a, b)
    if UNTRAINED in runs:  # did distilling help at all: each student, every seed, against its base
        (base_run,) = runs[UNTRAINED].values()
        for model, by_seed in runs.items():
            if model in per_seed:
                seeds = sorted(by_seed)
                paired[f"{model} - {UNTRAINED}"] = {
                    name: stats.paired_comparison(
                        aligned(model, name, [by_seed[s] for s in seeds]),
                        aligned(UNTRAINED, name, [base_run] * len(seeds)),
                    )
                    for name in metrics[model]
                }
    seeds_run = {m: sorted(s for s in by_seed if s is not None) for m, by_seed in runs.items() if m in per_seed}
    return metrics | {
        "per_seed": per_seed,
        "ci95": ci95,
        "paired": paired,
        "unanswered": unanswered,
        "seeds": seeds_run,
        "counts": counts,
    }


def aligned(model: str, name: str, seed_runs: list[dict]) -> np.ndarray:
    """(seeds, questions) correctness with the questions in the same order for every seed."""
    ids = seed_runs[0][name][0]
    for r in seed_runs[1:]:
        if r[name][0] != ids:
            raise ValueError(f"{model}: the seeds' predictions on {name!r} are not for the same questions")
    return np.stack([r[name][1] for r in seed_runs])


def _cell(metrics: dict, model: str, name: str) -> str:
    seeds = metrics["per_seed"].get(model, {}).get(name, [])
    low, high = metrics["ci95"][model][name]
    spread = f" ± {statistics.stdev(seeds):.3f}" if len(seeds) > 1 else ""
    return f"{metrics[model][name]:.3f}{spread} [{low:.2f}, {high:.2f}]"


def accuracy_table(metrics: dict) -> str:
    """Markdown: one row per model, one column per test set: mean (± sd over seeds) [95% interval]."""
    sets = plots.test_set_names(metrics)
    lines = ["| model | seeds | " + " | ".join(sets) + " |", "|---|---:|" + "---:|" * len(sets)]
    for m in plots.model_names(metrics):
        n = len(metrics["seeds"].get(m, [])) or 1
        lines.append(f"| {m} | {n} | " + " | ".join(_cell(metrics, m, s) for s in sets) + " |")
    return "\n".join(lines)


def add_section(report_path: Path, title: str, text: str, table: str) -> None:
    """A section after a report's accuracy figures (before its "### Every seed"), e.g. another split's rows."""
    body = report_path.read_text()
    section = f"### {title}\n\n{text}\n\n{table}\n\n"
    at = body.find("### Every seed")
    report_path.write_text(body[:at] + section + body[at:] if at >= 0 else body + "\n" + section)


def accuracy_rows(metrics: dict) -> list[dict]:
    """The accuracy table as rows for a Prefect table artifact."""
    return [
        {"model": m, **{s: _cell(metrics, m, s) for s in plots.test_set_names(metrics)}}
        for m in plots.model_names(metrics)
    ]


def per_seed_table(metrics: dict) -> str:
    sets = plots.test_set_names(metrics)
    lines = ["| method | seed | " + " | ".join(sets) + " |", "|---|---:|" + "---:|" * len(sets)]
    for m, seeds in metrics["seeds"].items():
        for i, seed in enumerate(seeds):
            cells = " | ".join(f"{metrics['per_seed'][m][s][i]:.3f}" for s in sets)
            lines.append(f"| {m} | {seed} | {cells} |")
    return "\n".join(lines)


def unanswered_table(metrics: dict) -> str:
    sets = plots.test_set_names(metrics)
    lines = ["| model | " + " | ".join(f"{s} wrong | {s} unanswered" for s in sets) + " |"]
    lines.append("|---|" + "---:|---:|" * len(sets))
    for m in plots.model_names(metrics):
        cells = []
        for s in sets:
            unanswered = metrics["unanswered"][m][s]
            cells += [f"{1 - metrics[m][s] - unanswered:.3f}", f"{unanswered:.3f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons(metrics: dict) -> str:
    """The paired comparisons as a table and one plain sentence each."""
    if not metrics["paired"]:
        return "No paired comparison: the run has one student method (or its methods share no seed)."
    lines = [
        "| comparison | test set | difference | 95% interval | p (paired bootstrap over seeds and questions) "
        "| seeds ahead | |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    sentences = []
    for key, by_set in metrics["paired"].items():
        for name, r in by_set.items():
            low, high = r["ci95"]
            verdict = "significant" if r["significant"] else "not significant"
            interval = f"[{low:+.3f}, {high:+.3f}]"
            seeds = f"{r['seeds_won']}/{len(r['per_seed'])}" if "per_seed" in r else "n/a"
            lines.append(
                f"| {key} | {name} | {r['difference']:+.3f} | {interval} | {r['p_value']:.3g} | {seeds} | {verdict} |"
            )
            sentences.append(f"- {stats.describe_comparison(key, name, r)}")
    return "\n".join(lines) + "\n\n" + "\n".join(sentences)


def console_summary(metrics: dict) -> str:
    """What a run's command prints at the end: accuracy, the paired comparisons and the data counts."""
    return "\n".join(
        [
            "\nAccuracy per test set: mean (± sd over seeds) [95% interval]; unanswered = wrong\n",
            accuracy_table(metrics),
            "",
            comparisons(metrics),
            "\nTeacher data:\n",
            counts_table(metrics),
        ]
    )


def counts_table(metrics: dict) -> str:
    c = metrics["counts"]
    if "contaminated" not in c:  # a run from before the decontaminate stage
        return "\n".join(
            [
                "| questions | samples drawn | judged correct | selected |",
                "|---:|---:|---:|---:|",
                f"| {c['questions']} | {c['samples']} | {c['correct']} | {c['selected']} |",
            ]
        )
    share = f" ({c['correct'] / c['samples']:.1%})" if c["samples"] else ""
    header = "| questions | samples drawn | judged correct | selected | removed: overlap a test set | trained on |"
    row = (
        f"| {c['questions']} | {c['samples']} | {c['correct']}{share} | {c['selected']} | {c['contaminated']} "
        f"| {c['trained_on']} |"
    )
    rule = "|---:|---:|---:|---:|---:|---:|"
    if "generated_tokens" in c:  # sampled here: the yield of rejection sampling
        header += " generated tokens | correct per 1,000 generated tokens |"
        row += f" {c['generated_tokens']} | {c['correct_per_1k_tokens']} |"
        rule += "---:|---:|"
    return "\n".join([header, rule, row])


def contamination_text(decontaminate_dir: Path) -> str:
    """A sentence on which test sets overlapped the training questions, for the report."""
    s = stage_summary(decontaminate_dir)
    found = [
        f"{n} training question{'s' * (n != 1)} ({s['test_questions_overlapping'][name]} of its "
        f"{s['test_questions'][name]} questions) with test set `{name}`"
        for name, n in s["contaminated"].items()
        if n
    ]
    if not found:
        return f"No training question shares a {gram_name(s['ngram'])} with a test question."
    return (
        f"Training questions sharing a {gram_name(s['ngram'])} with a test question were removed: "
        + "; ".join(found)
        + f" (every pair in the decontaminate stage's `{output('decontaminate', Path(), 'overlaps')}`)."
    )


def sample_rationales(select_dir: Path, limit: int = 2) -> str:
    """A few selected rationales of one question each, to see what the student learns from."""
    rows = pq.read_table(
        output("select", select_dir, "selected"), columns=["question_id", "question", "rationale"]
    ).to_pylist()
    out, seen = [], []
    for r in rows:
        if r["question_id"] not in seen:
            if len(seen) == limit:
                break
            seen.append(r["question_id"])
            out.append(f"\n**{r['question']}**\n")
        out.append(f"- {r['rationale']}")
    return "\n".join(out)


def data_url(png: Path) -> str:
    """A PNG as a data URL: an image artifact the Prefect UI shows without a file server."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def inline_images(markdown: str, folder: Path) -> str:
    """The report with its ``![..](name.png)`` images as data URLs: the Prefect UI shows a markdown
    artifact on its own, where the files beside report.md are not reachable."""

    def embed(match: re.Match) -> str:
        png = folder / match.group(2)
        return f"![{match.group(1)}]({data_url(png)})" if png.is_file() else match.group(0)

    return re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", embed, markdown)


def checkpoint_choices(choose_dirs: dict[str, dict[int, Path]]) -> dict:
    """Each (method, seed)'s validation accuracy by checkpoint and the one kept (the choose stages)."""
    choices: dict = {}
    for name, runs in choose_dirs.items():
        for seed, d in sorted(runs.items()):
            s = stage_summary(d)
            choices.setdefault(name, {})[str(seed)] = {
                "validation_accuracy": s["validation_accuracy"],
                "chosen": s["chosen"],
                "questions": s["validation_questions"],
            }
    return choices


def checkpoint_text(checkpoints: dict) -> str:
    """The report's checkpoint-selection table and plot; nothing without a validation split."""
    if not checkpoints:
        return ""
    runs = [(name, seed, run) for name, seeds in checkpoints.items() for seed, run in seeds.items()]
    names = list(runs[0][2]["validation_accuracy"])
    rows = [
        f"| {name} | {seed} | "
        + " | ".join(
            f"**{a:.3f}**" if c == run["chosen"] else f"{a:.3f}" for c, a in run["validation_accuracy"].items()
        )
        + f" | {run['chosen']} |"
        for name, seed, run in runs
    ]
    return f"""
### Checkpoint selection

Each epoch's model answered the {runs[0][2]["questions"]} held-out validation questions (greedy, never
trained on); the most accurate was kept (a tie goes to the earliest) and is the one evaluated above.

| student | seed | {" | ".join(names)} | kept |
|---|---:|{"---:|" * len(names)}---|
{chr(10).join(rows)}

![validation accuracy by checkpoint]({VALIDATION_PLOT})
"""


def write_plots(report_dir: Path, metrics: dict, train_dirs: dict[str, dict[int, Path]]) -> None:
    logs = {
        name: [pq.read_table(output("train", d, "train_log")).to_pylist() for _, d in sorted(runs.items())]
        for name, runs in train_dirs.items()
    }
    plots.plot_accuracy(metrics, report_dir / "accuracy.png")
    colours = plots.model_colours(plots.model_names(metrics))
    plots.plot_training_curves(logs, report_dir / "training_curves.png", colours)
    plots.plot_teacher_gap(metrics, report_dir / "teacher_gap.png")
    if metrics.get("checkpoints"):
        plots.plot_validation(metrics["checkpoints"], report_dir / VALIDATION_PLOT, colours)


def write_report(
    report_dir: Path,
    metrics: dict,
    stage_dirs: dict[str, Path],
    train_dirs: dict[str, dict[int, Path]],
    evals: EvalDirs,
    *,
    warnings: Sequence[str] = (),
) -> Path:
    """metrics.json, environment.json, the plots and report.md, in ``report_dir``; ``warnings``
    (e.g. :func:`training_set_warnings`) open report.md in a section of their own."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    environment = describe()
    (report_dir / "environment.json").write_text(json.dumps(environment, indent=2))
    write_plots(report_dir, metrics, train_dirs)
    timings = "\n".join(
        f"| {name} | `{d.name}` | {read_manifest(d)['seconds']:.1f} |" for name, d in stage_dirs.items()
    )
    train_folders = [d for runs in train_dirs.values() for d in runs.values()]
    curation = [stage_dirs[s] for s in ("judge", "select", "decontaminate") if s in stage_dirs]
    rejections = rejection_counts(*curation, *train_folders)
    training = []
    for name, runs in train_dirs.items():
        for seed, d in sorted(runs.items()):
            s = stage_summary(d)
            training.append(
                f"| {name} | {seed} | {s['steps']} | {s['final_cross_entropy']:.4f} "
                f"| {fmt(s.get('consistency_share'))} | {s.get('dev_questions', 0)} "
                f"| {s.get('best_step') or 'last'} | {s['seconds']:.0f} |"
            )
    decoding = stage_summary(next(iter(next(iter(evals.values())).values())))
    how = "greedy" if decoding.get("samples", 1) == 1 else f"self-consistency over {decoding['samples']} samples"
    select = stage_summary(stage_dirs["select"])
    contamination = f"\n{contamination_text(stage_dirs['decontaminate'])}\n" if "decontaminate" in stage_dirs else ""
    packages = ", ".join(f"{k} {v}" for k, v in environment["packages"].items())
    cpu = environment["cpu"]
    warned = "".join(f"- {line}\n" for line in warnings)
    text = "# Distillation report\n\n" + (f"## Warnings\n\n{warned}\n" if warned else "")
    text += f"""## Accuracy ({how}; an unanswered question counts as wrong)

Mean over training seeds (± standard deviation over seeds) [95% interval: Wilson for a single run,
bootstrap over seeds and questions for several].

{accuracy_table(metrics)}

![accuracy](accuracy.png)

### Every seed

{per_seed_table(metrics)}

### Methods compared on the same questions and seeds

{comparisons(metrics)}

### Teacher-student gap

![gap](teacher_gap.png)

### Wrong and unanswered

{unanswered_table(metrics)}

## Data

{counts_table(metrics)}

Selection outcomes per question: {", ".join(f"{k} {v}" for k, v in sorted(select["outcomes"].items()))}.
In questions with two or more kept rationales, the mean of each one's highest word-trigram
Jaccard similarity to the others kept: {fmt(select["mean_max_similarity"])}.
{contamination}
| rejection (stage: reason) | rationales |
|---|---:|
""" + "\n".join(f"| {k} | {v} |" for k, v in sorted(rejections.items()))
    text += f"""

## Training

| student | seed | steps | final cross-entropy | consistency share of the loss | dev questions | kept step | seconds |
|---|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(training)}

![training curves](training_curves.png)
{checkpoint_text(metrics.get("checkpoints", {}))}
## Reproducibility

Commit {environment["commit"]}; Python {environment["python"]} on {environment["platform"]}.
CPU: {cpu["model"]}, {cpu["cores"]} cores, features {", ".join(cpu["features"]) or "none of interest"}
(torch kernels: {environment["torch_cpu_capability"]}, {environment["torch_threads"]} torch threads;
CUDA: {environment["cuda"] or "none"}). Training seeds: {json.dumps(metrics["seeds"])}.
Packages: {packages}. The same record is in `environment.json`.

## Stages (output folder = fingerprint)

| stage | folder | seconds when computed |
|---|---|---:|
{timings}

## Selected rationales (examples)
{sample_rationales(stage_dirs.get("decontaminate", stage_dirs["select"]))}
"""
    path = report_dir / "report.md"
    path.write_text(text)
    return path
