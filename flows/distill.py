"""The end-to-end distillation flow: sample (or import) -> judge -> select -> decontaminate ->
materialize -> train -> evaluate.

Each stage's output folder is named by a fingerprint of its settings and its inputs' fingerprints
(teacher and base-model weights by content). The flow computes its plan (``flows.plan``: every
stage call and fingerprint) up front and executes exactly that plan, so an unchanged stage is a
Prefect cache hit that never enters its body, and a changed setting re-runs exactly the stages
downstream of it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow
from pydantic import ValidationError

from data_schemas import exit_invalid
from flows.config import DistillConfig
from flows.plan import plan
from flows.publish import publish_data, publish_plan, publish_report, publish_trainings
from flows.runner import announce, run_call, run_curation, run_side_by_side, run_students, warn_small_training_sets
from mcckd import report
from mcckd.teachers import record_distilled


@flow(name="distill", log_prints=True)
def distill(config: DistillConfig) -> dict:
    """Distil the teachers of ``config.sample`` (or the ``recorded`` rationales) into each student of
    ``config.students``; evaluate all."""
    p = plan(config)
    publish_plan(announce(p.calls, "distill"), "distill-plan")
    run_call(config, p.source)
    run_curation(config, p.curation)
    c = p.curation
    publish_data(p.source, c.judge, c.select, c.decontaminate, c.materialize)
    warnings = warn_small_training_sets(config.students, {"": c.materialize.out}, config.min_rationales)

    run_students(config, p.students)
    publish_trainings(p.students)
    evaluated = run_side_by_side(config, p.evaluations, config.parallel_evals)
    for call in p.exports.values():
        run_call(config, call)

    evals: report.EvalDirs = {}
    for (name, seed), ref in evaluated.items():
        evals.setdefault(name, {})[seed] = ref.path
    n_questions = report.stage_summary(p.source.out)["questions"]
    counts = report.data_counts(n_questions, p.source.out, c.judge.out, c.select.out, c.decontaminate.out)
    metrics = report.build_metrics(evals, counts, baseline=config.baseline_method) | {"warnings": warnings}
    train_dirs: dict[str, dict[int, Path]] = {}
    chosen: dict[str, dict[int, Path]] = {}
    for (name, seed), student in p.students.items():
        train_dirs.setdefault(name, {})[seed] = student.train.out
        if student.choose is not None:
            chosen.setdefault(name, {})[seed] = student.choose.out
    if chosen:  # with a validation split
        metrics["checkpoints"] = report.checkpoint_choices(chosen)
    curation = (p.source, *p.curation)
    stage_dirs = {call.stage: call.out for call in curation}
    stage_dirs |= {call.label: call.out for call in p.calls if call not in curation}
    path = report.write_report(config.report_dir, metrics, stage_dirs, train_dirs, evals, warnings=warnings)
    publish_report(config.report_dir, path, metrics)
    record_distilled(config.store, p.teacher_fps)  # what redistill compares with
    return metrics


def main() -> None:
    """``python -m flows.distill --config run.json``: a whole run (teachers, test sets, methods, seeds) from JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", type=Path, required=True, help="a DistillConfig as JSON")
    args = parser.parse_args()
    try:
        config = DistillConfig.model_validate_json(args.config.read_text())
    except ValidationError as error:
        exit_invalid("flows.distill", str(args.config), error)
    print(report.console_summary(distill(config)))


if __name__ == "__main__":
    main()
