"""The end-to-end distillation flow: sample -> judge -> select -> materialize -> train -> evaluate.

Each stage's output folder is named by a fingerprint of its settings and its inputs' fingerprints
(teacher and base-model weights by content). The flow computes every fingerprint up front, so an
unchanged stage is a Prefect cache hit that never enters its body, and a changed setting re-runs
exactly the stages downstream of it. Artifacts are created here in the flow body, not in the
tasks, so a cached stage still shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from mcckd import report
from mcckd.paths import PROJECT_ROOT
from mcckd.stages import stage_fingerprint
from mcckd.stages.evaluate import EvaluateSettings
from mcckd.stages.judge import JudgeSettings
from mcckd.stages.materialize import MaterializeSettings
from mcckd.stages.sample import SampleSettings
from mcckd.stages.select import SelectSettings
from mcckd.stages.train import TrainSettings
from mcckd.store import is_complete, path_fingerprint, stage_dir
from mcckd.teachers import teacher_fingerprint
from tasks.stages import TASKS


class StudentEval(BaseModel):
    """How students (and the untrained base) are prompted and decoded at evaluation."""

    template: str = "student"
    max_tokens: int = 192


class DistillConfig(BaseModel):
    store: Path = PROJECT_ROOT / "runs" / "store"
    report_dir: Path = PROJECT_ROOT / "runs" / "latest"
    train_questions: Path
    test_sets: dict[str, Path]  # split name -> questions Parquet; "id" and "ood*" splits
    sample: SampleSettings
    judge: JudgeSettings = JudgeSettings()
    select: SelectSettings = SelectSettings()
    materialize: MaterializeSettings = MaterializeSettings()
    students: dict[str, TrainSettings] = Field(description="name -> training settings, e.g. std_cot, mcc_kd")
    teacher_eval_template: str = "demo_teacher"
    student_eval: StudentEval = StudentEval()


class Ref(NamedTuple):
    """A stage's output folder (or an input file), the fingerprint that names it, and the file in
    the folder that the next stage reads."""

    path: Path
    fingerprint: str
    main: str = ""

    @property
    def input_path(self) -> Path:
        return self.path / self.main if self.main else self.path


STAGE_OUTPUT = {"sample": "samples.parquet", "judge": "judged.parquet", "select": "selected.parquet"}
STAGE_OUTPUT |= {"materialize": "train.parquet", "train": "model", "evaluate": "accuracy.json"}


def file_ref(path: Path) -> Ref:
    return Ref(path, path_fingerprint(path))


def run_stage(store: Path, stage: str, settings: BaseModel, inputs: dict[str, Ref], identity: dict[str, str]) -> Ref:
    """Run (or reuse) one stage. ``identity`` adds content fingerprints that settings only name by path."""
    fp = stage_fingerprint(stage, settings, {k: r.fingerprint for k, r in inputs.items()} | identity)
    out = stage_dir(store, stage, fp)
    # A cache record whose folder was deleted must not hit: refresh it instead.
    call = TASKS[stage].with_options(refresh_cache=not is_complete(out))
    call(
        stage=stage,
        settings=settings,
        inputs={k: str(r.input_path) for k, r in inputs.items()},
        out_dir=str(out),
        fingerprint=fp,
    )
    return Ref(out, fp, STAGE_OUTPUT[stage])


def _publish(key: str, stage: str, out: Path) -> None:
    summary = report.stage_summary(out)
    create_markdown_artifact(
        key=key, markdown=f"### {stage} `{out.name}`\n\n```\n{summary}\n```", description=f"{stage} summary"
    )


@flow(name="distill", log_prints=True)
def distill(config: DistillConfig) -> dict:
    """Distil the teachers of ``config.sample`` into each student of ``config.students``; evaluate all."""
    store = config.store
    tests = {split: file_ref(p) for split, p in config.test_sets.items()}
    teacher_fps = {t.name: teacher_fingerprint(t) for t in config.sample.teachers}

    samples = run_stage(
        store,
        "sample",
        config.sample,
        {"questions": file_ref(config.train_questions)},
        {f"teacher:{name}": fp for name, fp in teacher_fps.items()},
    )
    judged = run_stage(store, "judge", config.judge, {"samples": samples}, {})
    selected = run_stage(store, "select", config.select, {"judged": judged}, {})
    trainset = run_stage(store, "materialize", config.materialize, {"selected": selected}, {})
    for key, stage, ref in [
        ("sample", "sample", samples),
        ("select", "select", selected),
        ("materialize", "materialize", trainset),
    ]:
        _publish(f"{key}-summary", stage, ref.path)
    create_table_artifact(
        key="teacher-throughput",
        table=report.stage_summary(samples.path)["throughput"],
        description="per teacher: prompts/s and generated tokens/s over its wall time (engine start included)",
    )
    create_table_artifact(
        key="rejection-ledger",
        table=[
            {"stage: reason": k, "rationales": v}
            for k, v in sorted(report.rejection_counts(judged.path, selected.path).items())
        ],
        description="every rationale that did not reach the training set, by stage and reason "
        "(rows in each stage's rejections.parquet)",
    )
    create_table_artifact(
        key="judge-verdicts",
        table=[{"verdict": k, "rationales": v} for k, v in report.verdict_counts(judged.path).items()],
        description="judged samples by verdict (everything but 'correct' is in the rejection ledger)",
    )

    trained = {}
    for name, settings in config.students.items():
        base_fp = path_fingerprint(settings.base_model)
        trained[name] = run_stage(store, "train", settings, {"trainset": trainset}, {"base_model": base_fp})
        _publish(f"train-{name.replace('_', '-')}", "train", trained[name].path)

    base_model = next(iter(config.students.values())).base_model
    local = [t for t in config.sample.teachers if t.backend == "vllm"]  # served teachers are not re-scored
    models = {
        ("teacher" if len(local) == 1 else f"teacher-{t.name}"): (
            Path(t.model),
            teacher_fps[t.name],
            config.teacher_eval_template,
        )
        for t in local
    }
    models["untrained"] = (base_model, path_fingerprint(base_model), config.student_eval.template)
    models |= {n: (r.input_path, r.fingerprint, config.student_eval.template) for n, r in trained.items()}
    evals = {}
    for name, (model_dir, model_fp, template) in models.items():
        settings = EvaluateSettings(
            model=model_dir, model_name=name, template=template, max_tokens=config.student_eval.max_tokens
        )
        evals[name] = run_stage(store, "evaluate", settings, tests, {"model": model_fp}).path

    n_questions = report.stage_summary(samples.path)["questions"]
    metrics = report.build_metrics(n_questions, samples.path, judged.path, selected.path, evals)
    stage_dirs = {"sample": samples.path, "judge": judged.path, "select": selected.path, "materialize": trainset.path}
    stage_dirs |= {f"train {n}": r.path for n, r in trained.items()} | {f"evaluate {n}": p for n, p in evals.items()}
    path = report.write_report(config.report_dir, metrics, stage_dirs, {n: r.path for n, r in trained.items()})
    create_table_artifact(
        key="accuracy",
        table=[{"model": m, **acc} for m, acc in metrics.items() if m != "counts"],
        description="accuracy per test split",
    )
    create_markdown_artifact(key="distill-report", markdown=path.read_text(), description=str(path))
    return metrics
