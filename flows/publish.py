"""The artifacts a run shows in the Prefect UI: its plan, what each data stage produced, each
training's summary and loss curve, and the report with its plots.

Created in the flow run, not in the tasks, so a cached stage still shows them.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

from flows.plan import StageCall, Student
from mcckd import report, sweep
from mcckd.stages import output


def publish_plan(rows: list[dict], key: str) -> None:
    create_table_artifact(key=key, table=rows, description="every stage of the run, before it ran")


def _summary(key: str, call: StageCall) -> None:
    summary = json.dumps(report.stage_summary(call.out), indent=2, default=str)
    create_markdown_artifact(
        key=key,
        markdown=f"### {call.stage}\n\nfolder: `{call.out}`\n\n```json\n{summary}\n```",
        description=f"{call.stage} summary",
    )


def publish_data(source: StageCall, judge: StageCall, select: StageCall, decontaminate: StageCall, trainset: StageCall):
    """What the data stages produced: their summaries, the teachers' throughput, the rejection
    ledger, and the judge's verdicts with examples."""
    for call in (source, select, decontaminate, trainset):
        _summary(f"{call.stage}-summary", call)
    if source.stage == "sample":
        create_table_artifact(
            key="teacher-throughput",
            table=report.stage_summary(source.out)["throughput"],
            description="per teacher: prompts/s and generated tokens/s over its wall time (engine start included)",
        )
    ledgers = ", ".join(str(output(c.stage, c.out, "rejections").relative_to(c.out)) for c in (judge, select))
    create_table_artifact(
        key="rejection-ledger",
        table=[
            {"stage: reason": k, "rationales": v}
            for k, v in sorted(report.rejection_counts(judge.out, select.out, decontaminate.out).items())
        ],
        description=f"every rationale that did not reach the training set, by stage and reason (rows in {ledgers})",
    )
    create_table_artifact(
        key="judge-examples", table=report.verdict_examples(judge.out), description="a few rationales per verdict"
    )
    create_table_artifact(
        key="judge-verdicts",
        table=[{"verdict": k, "rationales": v} for k, v in report.verdict_counts(judge.out).items()],
        description="judged samples by verdict (everything but 'correct' is in the rejection ledger)",
    )


def publish_trainings(students: dict[tuple[str, int], Student]) -> None:
    """Each training's summary and loss curve; with a validation split, each checkpoint's validation
    accuracy and the one kept."""
    for (name, seed), student in students.items():
        key = f"train-{name.replace('_', '-')}-seed{seed}"
        _summary(key, student.train)
        plot = output("train", student.train.out, "loss_plot")
        create_image_artifact(image_url=report.data_url(plot), key=f"{key}-loss", description=str(plot))
        if student.choose is not None:
            _summary(f"choose-{name.replace('_', '-')}-seed{seed}", student.choose)
            plot = output("choose", student.choose.out, "plot")
            create_image_artifact(image_url=report.data_url(plot), key=f"{key}-validation", description=str(plot))


def publish_report(report_dir: Path, report_path: Path, metrics: dict) -> None:
    """The accuracy table, the report and its plots."""
    create_table_artifact(
        key="accuracy",
        table=report.accuracy_rows(metrics),
        description="accuracy per test set (mean over seeds) with its 95% interval",
    )
    markdown = report.inline_images(report_path.read_text(), report_dir)
    create_markdown_artifact(key="distill-report", markdown=markdown, description=str(report_path))
    for plot in report.PLOTS:
        create_image_artifact(
            image_url=report.data_url(report_dir / plot),
            key=f"plot-{plot.removesuffix('.png').replace('_', '-')}",
            description=f"{plot} ({report_dir})",
        )


def publish_sweep(report_dir: Path, report_path: Path, summary: dict) -> None:
    """The sweep's data per cell, its results, its report and the heatmaps."""
    create_table_artifact(key="sweep-data", table=summary["data"], description="per cell: the training set it made")
    create_table_artifact(
        key="sweep-results", table=sweep.result_rows(summary["results"]), description="per (cell, method)"
    )
    markdown = report.inline_images(report_path.read_text(), report_dir)
    create_markdown_artifact(key="sweep-report", markdown=markdown, description=str(report_path))
    if summary["results"]:
        for name in summary["test_sets"]:
            create_image_artifact(
                image_url=report.data_url(report_dir / sweep.heatmap_file(name)),
                key=f"sweep-heatmap-{name.replace('_', '-').lower()}",
                description=f"accuracy on {name} by granularity x format ({report_dir})",
            )
