"""The end-to-end distillation flow: sample -> judge -> select -> decontaminate -> materialize -> train
-> evaluate.

Each stage's output folder is named by a fingerprint of its settings and its inputs' fingerprints
(teacher and base-model weights by content). The flow computes every fingerprint up front, so an
unchanged stage is a Prefect cache hit that never enters its body, and a changed setting re-runs
exactly the stages downstream of it. Artifacts are created here in the flow body, not in the
tasks, so a cached stage still shows them.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import NamedTuple, TypeVar

from prefect import flow
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.futures import wait
from prefect.states import State
from pydantic import BaseModel, Field, field_validator, model_validator
from tqdm.auto import tqdm

from mcckd import report
from mcckd.generation import VllmSettings
from mcckd.models import model_fingerprint
from mcckd.paths import PROJECT_ROOT
from mcckd.stages import STAGES, stage_fingerprint
from mcckd.stages.decontaminate import DecontaminateSettings
from mcckd.stages.evaluate import EvaluateSettings
from mcckd.stages.import_recorded import ImportSettings
from mcckd.stages.judge import JudgeSettings
from mcckd.stages.materialize import MaterializeSettings
from mcckd.stages.sample import SampleSettings
from mcckd.stages.select import SelectSettings
from mcckd.stages.train import TrainSettings
from mcckd.store import is_complete, path_fingerprint, stage_dir
from mcckd.teachers import TeacherSpec, record_distilled, teacher_identity
from tasks.stages import TASKS


class StudentEval(BaseModel):
    """How every model is decoded at evaluation (each student is asked as it was trained: its
    ``TrainSettings.template`` or ``chat``; the untrained base as the first method's students)."""

    max_tokens: int = Field(192, ge=1, description="longest answer generated")
    samples: int = Field(1, ge=1, description="1 = greedy; n > 1 = self-consistency (majority vote over n)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of self-consistency")
    vllm: VllmSettings = Field(VllmSettings(), description="the evaluation engine (KV cache, dtype, parallelism)")
    max_questions: int | None = Field(None, ge=1, description="only the first N questions of each test set")


class StudentMethod(BaseModel):
    """One way to train the student (Std-CoT: alpha 0; MCC-KD: alpha > 0) and the seeds to train it with.

    Each (method, seed) is its own cached train and evaluate stage; the report gives every seed and
    the mean, with intervals over seeds and questions.
    """

    train: TrainSettings = Field(description="student base, template and loop (alpha 0 = Std-CoT)")
    seeds: list[int] = Field([0], min_length=1, description="training seeds (TrainConfig.seed of each run)")


class StageDeployments(BaseModel):
    """Deployments of the ``stage`` flow (``flows/stage.py``) that run stages on their own work pools."""

    accelerator: str = Field("stage/stage-gpu", description="runs sample, train and evaluate (a GPU pool)")
    cpu: str = Field("stage/stage-cpu", description="runs judge, select, decontaminate and materialize (a CPU pool)")


class RunConfig(BaseModel):
    """What every run shares (distill and sweep): where it writes, what it is tested on, how the
    rationales are curated, how models are decoded, and where stages run."""

    store: Path = Field(PROJECT_ROOT / "runs" / "store", description="stage folders (shared by every worker)")
    report_dir: Path = Field(PROJECT_ROOT / "runs" / "latest", description="report.md, metrics.json and plots")
    test_sets: dict[str, Path] = Field(
        description="name -> test set (questions Parquet, JSON/JSONL/Parquet with the import stage's field names, "
        "or a datasets folder); every model is evaluated on each, and no training question may overlap one"
    )
    test_fields: dict[str, dict[str, str]] = Field(
        {},
        description="test set name -> {our field (question, answer, id): the file's column}, for files that "
        "name them otherwise",
    )
    judge: JudgeSettings = Field(JudgeSettings(), description="how answers are read and which rationales count")
    select: SelectSettings = Field(SelectSettings(), description="K diverse correct rationales per question")
    decontaminate: DecontaminateSettings = Field(
        DecontaminateSettings(), description="training questions sharing a word n-gram with a test question are removed"
    )
    materialize: MaterializeSettings = Field(MaterializeSettings(), description="the training set's answer spans")
    teacher_eval_template: str = Field("demo_teacher", description="prompt template the teachers are evaluated with")
    student_eval: StudentEval = Field(StudentEval(), description="how every model is decoded at evaluation")
    parallel_trains: int = Field(
        1,
        ge=1,
        description="train stages run at once, each pinned to cores / parallel_trains cores "
        "(two 1-thread runs beat two 2-thread runs in turn on 2 cores)",
    )
    parallel_evals: int = Field(
        1,
        ge=1,
        description="evaluate stages run at once, each pinned to cores / parallel_evals cores (a small model's "
        "vLLM engine keeps one core busy: two side by side take the time of one)",
    )
    stage_deployments: StageDeployments | None = Field(
        None,
        description="run each stage as a run of these deployments, on their pools' workers (the store must be "
        "shared); None runs every stage under this flow run, on this machine",
    )

    @field_validator("test_sets")
    @classmethod
    def _test_set_names(cls, test_sets: dict[str, Path]) -> dict[str, Path]:
        if "selected" in test_sets:
            raise ValueError("a test set may not be named 'selected' (the decontaminate stage's training input)")
        return test_sets


class DistillConfig(RunConfig):
    train_questions: Path | None = Field(
        None,
        description="questions with gold answers that the teachers answer (any format mcckd.readers reads); "
        "with recorded: gold answers for a recorded file that has none, joined on the question",
    )
    sample: SampleSettings | None = Field(
        None, description="teachers, prompts (CoT format x granularity), samples per question"
    )
    recorded: Path | None = Field(None, description="rationales you already have, imported instead of sampled")
    recorded_as: ImportSettings = Field(ImportSettings(), description="how the recorded file is read")
    students: dict[str, StudentMethod] = Field(description="name -> method and seeds, e.g. std_cot, mcc_kd")
    baseline: str | None = Field(
        None,
        description="the method every other is compared with; default: the one trained without consistency "
        "(alpha 0), else the first (a deployment's parameters need not keep the order written)",
    )

    @model_validator(mode="after")
    def _baseline(self) -> DistillConfig:
        if self.baseline is not None and self.baseline not in self.students:
            raise ValueError(f"baseline {self.baseline!r} is not a student method ({sorted(self.students)})")
        if (self.sample is None) == (self.recorded is None):
            raise ValueError("give exactly one source of rationales: sample (teachers) or recorded (a file)")
        if self.sample is not None and self.train_questions is None:
            raise ValueError("sample needs train_questions: the questions the teachers answer")
        return self

    @property
    def teachers(self) -> list[TeacherSpec]:
        return self.sample.teachers if self.sample is not None else []

    @property
    def baseline_method(self) -> str:
        plain = [name for name, m in self.students.items() if m.train.loop.alpha == 0]
        return self.baseline or (plain[0] if plain else next(iter(self.students)))


class Ref(NamedTuple):
    """A stage's output folder (or an input file), the fingerprint that names it, and the file in
    the folder that the next stage reads."""

    path: Path
    fingerprint: str
    main: str = ""

    @property
    def input_path(self) -> Path:
        return self.path / self.main if self.main else self.path


K = TypeVar("K")  # what names a training job: (method, seed) in distill, (cell, method, seed) in a sweep

STAGE_OUTPUT = {
    "sample": "samples.parquet",
    "import": "samples.parquet",
    "judge": "judged.parquet",
    "select": "selected.parquet",
    "decontaminate": "selected.parquet",
}
STAGE_OUTPUT |= {"materialize": "train.parquet", "train": "model", "evaluate": "accuracy.json"}


def file_ref(path: Path) -> Ref:
    return Ref(path, path_fingerprint(path))


def stage_call(config: RunConfig, stage: str, settings: BaseModel, inputs: dict[str, Ref], identity: dict[str, str]):
    """The task call of one stage and the Ref of its output. ``identity`` adds content fingerprints
    that settings only name by path."""
    fp = stage_fingerprint(stage, settings, {k: r.fingerprint for k, r in inputs.items()} | identity)
    out = stage_dir(config.store, stage, fp)
    deployments = config.stage_deployments
    # A cache record whose folder was deleted must not hit: refresh it instead.
    call = TASKS[stage].with_options(refresh_cache=not is_complete(out))
    kwargs = dict(
        stage=stage,
        settings=settings,
        inputs={k: str(r.input_path) for k, r in inputs.items()},
        out_dir=str(out),
        fingerprint=fp,
        deployment=deployments and (deployments.accelerator if STAGES[stage].uses_accelerator else deployments.cpu),
    )
    return call, kwargs, Ref(out, fp, STAGE_OUTPUT[stage])


def run_stage(
    config: RunConfig,
    stage: str,
    settings: BaseModel,
    inputs: dict[str, Ref],
    identity: dict[str, str],
    label: str = "",
) -> Ref:
    """Run (or reuse) one stage, wait for it and say on the console what it produced."""
    call, kwargs, ref = stage_call(config, stage, settings, inputs, identity)
    state = call(**kwargs, return_state=True)
    state.result()  # raises the stage's failure
    say(label or stage, ref.path, state)
    return ref


def say(label: str, out: Path, state: State) -> None:
    """One line per stage on the console, beside the progress bars (log_prints would send it to the log)."""
    tqdm.write(report.stage_line(label, out, cached=state.name == "Cached"))


def _publish(key: str, stage: str, out: Path) -> None:
    summary = json.dumps(report.stage_summary(out), indent=2, default=str)
    create_markdown_artifact(
        key=key, markdown=f"### {stage}\n\nfolder: `{out}`\n\n```json\n{summary}\n```", description=f"{stage} summary"
    )


class Curated(NamedTuple):
    """The curation stages of one source of rationales."""

    judged: Ref
    selected: Ref
    decontaminated: Ref  # selected, less the rationales of questions that overlap a test set
    trainset: Ref


def rationale_source(config: DistillConfig, teacher_fps: dict[str, str]) -> Ref:
    """The rationales: sampled from the teachers, or imported from the recorded file."""
    if config.sample is None:
        labels = {"labels": file_ref(config.train_questions)} if config.train_questions else {}
        return run_stage(config, "import", config.recorded_as, {"recorded": file_ref(config.recorded)} | labels, {})
    questions = {"questions": file_ref(config.train_questions)}
    identity = {f"teacher:{name}": fp for name, fp in teacher_fps.items()}
    return run_stage(config, "sample", config.sample, questions, identity)


def decontaminate_inputs(config: RunConfig, selected: Ref) -> dict[str, Ref]:
    """The decontaminate stage's inputs: the selected rationales and every test set of ``config``."""
    return {"selected": selected} | test_refs(config)


def curate(config: RunConfig, samples: Ref, label: str = "") -> Curated:
    """judge -> select -> decontaminate -> materialize on one stage's samples; says on the console
    which test sets the training questions overlapped."""
    suffix = f" {label}" if label else ""
    judged = run_stage(config, "judge", config.judge, {"samples": samples}, {}, label=f"judge{suffix}")
    selected = run_stage(config, "select", config.select, {"judged": judged}, {}, label=f"select{suffix}")
    decontaminated = run_stage(
        config,
        "decontaminate",
        config.decontaminate.model_copy(update={"fields": config.test_fields}),
        decontaminate_inputs(config, selected),
        {},
        label=f"decontaminate{suffix}",
    )
    for line in report.contamination_lines(decontaminated.path, f"decontaminate{suffix}"):
        tqdm.write(line)
    trainset = run_stage(
        config, "materialize", config.materialize, {"selected": decontaminated}, {}, label=f"materialize{suffix}"
    )
    return Curated(judged, selected, decontaminated, trainset)


def with_seed(settings: TrainSettings, seed: int) -> TrainSettings:
    return settings.model_copy(update={"loop": settings.loop.model_copy(update={"seed": seed})})


def train_inputs(settings: TrainSettings, trainset: Ref) -> tuple[dict[str, Ref], dict[str, str]]:
    """A training's inputs and identity: the training set, and the base model's weights by content."""
    return {"trainset": trainset}, {"base_model": model_fingerprint(settings.base_model)}


def run_side_by_side(config: RunConfig, jobs: dict[K, tuple], labels: dict[K, str], at_once: int) -> dict[K, Ref]:
    """Run stage calls (``stage_call``'s (call, kwargs, ref)) ``at_once`` at a time; one console line each.

    Stored ones come back at once; the rest run in batches, each child pinned to its share of the
    cores (a cached run in a batch would leave its share idle).
    """
    stored = [key for key, (_, kwargs, _) in jobs.items() if is_complete(Path(kwargs["out_dir"]))]
    to_run = [key for key in jobs if key not in stored]
    batches = [stored, *(to_run[i : i + at_once] for i in range(0, len(to_run), at_once))]
    threads = max(1, (os.cpu_count() or 1) // at_once)
    for batch in batches:
        futures = {key: jobs[key][0].submit(**jobs[key][1], threads=threads) for key in batch}
        wait(list(futures.values()))
        for key, future in futures.items():
            future.result()  # raises the stage's failure
            say(labels[key], jobs[key][2].path, future.state)
    return {key: ref for key, (_, _, ref) in jobs.items()}


def train_runs(config: RunConfig, jobs: dict[K, tuple[TrainSettings, Ref]], labels: dict[K, str]) -> dict[K, Ref]:
    """Train every job (settings, trainset), ``config.parallel_trains`` at a time."""
    calls = {
        key: stage_call(config, "train", settings, *train_inputs(settings, trainset))
        for key, (settings, trainset) in jobs.items()
    }
    return run_side_by_side(config, calls, labels, config.parallel_trains)


# model -> seed -> (folder, fingerprint, how it is asked: EvaluateSettings' template and chat fields)
ModelRuns = dict[str, dict[int | None, tuple[Path, str, dict]]]


def asked_as(settings: TrainSettings) -> dict:
    """A student is evaluated with the prompt it was trained on (its template, or its chat turn)."""
    return {"template": settings.template, "chat": settings.chat}


def reference_models(
    config: RunConfig, teachers: list[TeacherSpec], teacher_fps: dict[str, str], base: TrainSettings
) -> ModelRuns:
    """The models every student is read against: each local teacher (served ones are not re-scored)
    and the untrained student base, asked as its students are."""
    local = [t for t in teachers if t.backend == "vllm"]
    models: ModelRuns = {
        ("teacher" if len(local) == 1 else f"teacher-{t.name}"): {
            None: (Path(t.model), teacher_fps[t.name], {"template": config.teacher_eval_template})
        }
        for t in local
    }
    models[report.UNTRAINED] = {None: (base.base_model, model_fingerprint(base.base_model), asked_as(base))}
    return models


def test_refs(config: RunConfig) -> dict[str, Ref]:
    """The evaluate stage's inputs: every test set of ``config``, by content."""
    return {split: file_ref(p) for split, p in config.test_sets.items()}


def evaluate_settings(config: RunConfig, model_dir: Path, run_name: str, asked: dict) -> EvaluateSettings:
    """How ``model_dir`` is evaluated: ``config.student_eval``'s decoding, under its run name, with
    the prompt ``asked`` (template, chat)."""
    decoding = config.student_eval.model_dump(include={"max_tokens", "samples", "temperature", "vllm", "max_questions"})
    return EvaluateSettings(model=model_dir, model_name=run_name, fields=config.test_fields, **asked, **decoding)


def evaluate_runs(config: RunConfig, models: ModelRuns) -> report.EvalDirs:
    """Evaluate every (model, seed) on every test set of ``config``, ``config.parallel_evals`` at a time."""
    tests = test_refs(config)
    calls, labels = {}, {}
    for name, runs in models.items():
        for seed, (model_dir, model_fp, asked) in runs.items():
            run_name = name if seed is None else f"{name}-seed{seed}"
            settings = evaluate_settings(config, model_dir, run_name, asked)
            calls[name, seed] = stage_call(config, "evaluate", settings, tests, {"model": model_fp})
            labels[name, seed] = f"evaluate {run_name}"
    refs = run_side_by_side(config, calls, labels, config.parallel_evals)
    evals: report.EvalDirs = {name: {} for name in models}
    for (name, seed), ref in refs.items():
        evals[name][seed] = ref.path
    return evals


@flow(name="distill", log_prints=True)
def distill(config: DistillConfig) -> dict:
    """Distil the teachers of ``config.sample`` (or the ``recorded`` rationales) into each student of
    ``config.students``; evaluate all."""
    teacher_fps = {t.name: teacher_identity(t) for t in config.teachers}
    samples = rationale_source(config, teacher_fps)
    judged, selected, decontaminated, trainset = curate(config, samples)
    source = "sample" if config.sample is not None else "import"
    for key, stage, ref in [
        (source, source, samples),
        ("select", "select", selected),
        ("decontaminate", "decontaminate", decontaminated),
        ("materialize", "materialize", trainset),
    ]:
        _publish(f"{key}-summary", stage, ref.path)
    if config.sample is not None:
        create_table_artifact(
            key="teacher-throughput",
            table=report.stage_summary(samples.path)["throughput"],
            description="per teacher: prompts/s and generated tokens/s over its wall time (engine start included)",
        )
    create_table_artifact(
        key="rejection-ledger",
        table=[
            {"stage: reason": k, "rationales": v}
            for k, v in sorted(report.rejection_counts(judged.path, selected.path, decontaminated.path).items())
        ],
        description="every rationale that did not reach the training set, by stage and reason "
        "(rows in each stage's rejections.parquet)",
    )
    create_table_artifact(
        key="judge-examples",
        table=report.verdict_examples(judged.path),
        description="a few rationales per verdict, as the judge read them",
    )
    create_table_artifact(
        key="judge-verdicts",
        table=[{"verdict": k, "rationales": v} for k, v in report.verdict_counts(judged.path).items()],
        description="judged samples by verdict (everything but 'correct' is in the rejection ledger)",
    )

    jobs = {
        (name, seed): (with_seed(method.train, seed), trainset)
        for name, method in config.students.items()
        for seed in method.seeds
    }
    refs = train_runs(config, jobs, {key: f"train {key[0]} seed {key[1]}" for key in jobs})
    trained: dict[str, dict[int, Ref]] = {}
    for (name, seed), ref in refs.items():
        trained.setdefault(name, {})[seed] = ref
        key = f"train-{name.replace('_', '-')}-seed{seed}"
        _publish(key, "train", ref.path)
        create_image_artifact(
            image_url=report.data_url(ref.path / "loss.png"), key=f"{key}-loss", description=f"{ref.path}/loss.png"
        )

    base = next(iter(config.students.values())).train
    models = reference_models(config, config.teachers, teacher_fps, base)
    for name, runs in trained.items():
        asked = asked_as(config.students[name].train)
        models[name] = {seed: (r.input_path, r.fingerprint, asked) for seed, r in runs.items()}
    evals = evaluate_runs(config, models)

    n_questions = report.stage_summary(samples.path)["questions"]
    counts = report.data_counts(n_questions, samples.path, judged.path, selected.path, decontaminated.path)
    metrics = report.build_metrics(evals, counts, baseline=config.baseline_method)
    stage_dirs = {source: samples.path, "judge": judged.path, "select": selected.path}
    stage_dirs |= {"decontaminate": decontaminated.path, "materialize": trainset.path}
    train_dirs = {name: {seed: r.path for seed, r in runs.items()} for name, runs in trained.items()}
    for name, runs in train_dirs.items():
        stage_dirs |= {f"train {name} seed {seed}": d for seed, d in runs.items()}
    for name, runs in evals.items():
        stage_dirs |= {f"evaluate {name}" + ("" if seed is None else f" seed {seed}"): d for seed, d in runs.items()}
    path = report.write_report(config.report_dir, metrics, stage_dirs, train_dirs, evals)
    create_table_artifact(
        key="accuracy",
        table=report.accuracy_rows(metrics),
        description="accuracy per test set (mean over seeds) with its 95% interval",
    )
    markdown = report.inline_images(path.read_text(), config.report_dir)
    create_markdown_artifact(key="distill-report", markdown=markdown, description=str(path))
    for plot in report.PLOTS:
        create_image_artifact(
            image_url=report.data_url(config.report_dir / plot),
            key=f"plot-{plot.removesuffix('.png').replace('_', '-')}",
            description=f"{plot} ({config.report_dir})",
        )
    record_distilled(config.store, teacher_fps)  # what redistill compares with
    return metrics


def main() -> None:
    """``python -m flows.distill --config run.json``: a whole run (teachers, test sets, methods, seeds) from JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", type=Path, required=True, help="a DistillConfig as JSON")
    args = parser.parse_args()
    metrics = distill(DistillConfig.model_validate_json(args.config.read_text()))
    print(report.console_summary(metrics))


if __name__ == "__main__":
    main()
