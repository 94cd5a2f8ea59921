"""The plan of a run: every stage call (stage, settings, inputs, fingerprint, output folder), computed
from the config before anything runs.

``distill`` and the sweep execute their plan's calls and nothing else, so what a run writes is what
its plan says: the console's "N stored, M to run", the sweep's budget and the plan table in the UI
count the same calls the run executes. The curation chain, a training and an evaluation are each
planned by one function here, whichever flow uses them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel

from flows.config import DistillConfig, RunConfig
from mcckd import report
from mcckd.models import model_fingerprint, model_id
from mcckd.stages import STAGES, stage_fingerprint
from mcckd.stages.choose import ChooseSettings
from mcckd.stages.evaluate import EvaluateSettings
from mcckd.stages.export import ExportSettings
from mcckd.stages.train import TrainSettings
from mcckd.store import is_complete, path_fingerprint, stage_dir
from mcckd.teachers import TeacherSpec, teacher_identity


class Ref(NamedTuple):
    """A stage's output folder (or an input file), the fingerprint that names it, and the file in
    the folder that the next stage reads."""

    path: Path
    fingerprint: str
    main: str = ""

    @property
    def input_path(self) -> Path:
        return self.path / self.main if self.main else self.path


def file_ref(path: Path) -> Ref:
    """An input file (or folder), named by its content."""
    return Ref(path, path_fingerprint(path))


@dataclass(frozen=True)
class StageCall:
    """One stage of a plan: what it runs with and where its output lands."""

    stage: str
    label: str  # what the console, the plan table and the UI call it
    settings: BaseModel
    inputs: dict[str, Ref]
    fingerprint: str
    out: Path

    @property
    def ref(self) -> Ref:
        """The output, as the next stage's input (the stage's main output file)."""
        spec = STAGES[self.stage]
        return Ref(self.out, self.fingerprint, spec.outputs[spec.main].file)

    @property
    def stored(self) -> bool:
        return is_complete(self.out)

    def row(self) -> dict:
        return {"stage": self.stage, "what": self.label, "fingerprint": self.fingerprint, "state": state(self.out)}


def state(out: Path) -> str:
    return "stored (cached)" if is_complete(out) else "to run"


def stage_call(
    config: RunConfig, stage: str, settings: BaseModel, inputs: dict[str, Ref], identity: dict[str, str], label: str
) -> StageCall:
    """A stage call and its fingerprint. ``identity`` adds content fingerprints that settings only
    name by path (teacher and base-model weights)."""
    fp = stage_fingerprint(stage, settings, {k: r.fingerprint for k, r in inputs.items()} | identity)
    return StageCall(stage, label, settings, inputs, fp, stage_dir(config.store, stage, fp))


def test_refs(config: RunConfig) -> dict[str, Ref]:
    """Every test set of ``config``, by content (the inputs of decontaminate and evaluate)."""
    return {split: file_ref(p) for split, p in config.test_sets.items()}


@dataclass(frozen=True)
class Curation:
    """The curation stages of one source of rationales; iterating gives them in the order they run."""

    judge: StageCall
    select: StageCall
    decontaminate: StageCall  # selected, less the rationales of questions that overlap a test set
    materialize: StageCall
    holdout: StageCall | None = None  # with config.validation: sets the validation questions aside first

    def __iter__(self) -> Iterator[StageCall]:
        calls = (self.holdout, self.judge, self.select, self.decontaminate, self.materialize)
        return iter([c for c in calls if c is not None])

    @property
    def validation(self) -> Ref | None:
        """The validation questions, or None without a validation split."""
        return None if self.holdout is None else output_ref(self.holdout, "validation")


def output_ref(call: StageCall, output: str) -> Ref:
    """Another output than the main one of a planned stage, as an input of a later stage."""
    return Ref(call.out, call.fingerprint, STAGES[call.stage].outputs[output].file)


def plan_curation(config: RunConfig, samples: Ref, label: str = "") -> Curation:
    """[holdout ->] judge -> select -> decontaminate (against every test set, read with ``test_fields``,
    and the validation questions) -> materialize, on one source's samples."""
    suffix = f" {label}" if label else ""
    holdout, validation = None, {}
    if config.validation is not None:
        holdout = stage_call(config, "holdout", config.validation, {"samples": samples}, {}, f"holdout{suffix}")
        samples, validation = holdout.ref, {"validation": output_ref(holdout, "validation")}
    judge = stage_call(config, "judge", config.judge, {"samples": samples}, {}, f"judge{suffix}")
    select = stage_call(config, "select", config.select, {"judged": judge.ref}, {}, f"select{suffix}")
    decontaminate = stage_call(
        config,
        "decontaminate",
        config.decontaminate.model_copy(update={"fields": config.test_fields}),
        {"selected": select.ref} | test_refs(config) | validation,
        {},
        f"decontaminate{suffix}",
    )
    materialize = stage_call(
        config, "materialize", config.materialize, {"selected": decontaminate.ref}, {}, f"materialize{suffix}"
    )
    return Curation(judge, select, decontaminate, materialize, holdout)


def plan_source(config: DistillConfig, teacher_fps: dict[str, str]) -> StageCall:
    """The rationales: sampled from the teachers, or imported from the recorded file."""
    if config.sample is None:
        labels = {"labels": file_ref(config.train_questions)} if config.train_questions else {}
        inputs = {"recorded": file_ref(config.recorded)} | labels
        return stage_call(config, "import", config.recorded_as, inputs, {}, "import")
    identity = {f"teacher:{name}": fp for name, fp in teacher_fps.items()}
    return stage_call(
        config, "sample", config.sample, {"questions": file_ref(config.train_questions)}, identity, "sample"
    )


def train_call(config: RunConfig, settings: TrainSettings, trainset: Ref, label: str) -> StageCall:
    """A training: the training set, and the base model's weights by content."""
    identity = {"base_model": model_fingerprint(settings.base_model)}
    return stage_call(config, "train", settings, {"trainset": trainset}, identity, label)


def asked_as(settings: TrainSettings) -> dict:
    """A student is evaluated with the prompt it was trained on (its template, or its chat turn)."""
    return {"template": settings.template, "chat": settings.chat}


class Model(NamedTuple):
    """A model to evaluate: its folder (or source), its fingerprint, and how it is asked."""

    path: Path | str
    fingerprint: str
    asked: dict  # EvaluateSettings' template and chat fields


ModelRuns = dict[str, dict[int | None, Model]]  # model name -> seed (None: one run) -> model


def reference_models(
    config: RunConfig, teachers: list[TeacherSpec], teacher_fps: dict[str, str], base: TrainSettings
) -> ModelRuns:
    """The models every student is read against: each local teacher (served ones are not re-scored;
    none when ``evaluate_teachers`` is off) and the untrained student base, asked as its students are."""
    local = [t for t in teachers if t.backend == "vllm" and config.evaluate_teachers]
    models: ModelRuns = {
        ("teacher" if len(local) == 1 else f"teacher-{t.name}"): {
            None: Model(Path(t.model), teacher_fps[t.name], {"template": config.teacher_eval_template})
        }
        for t in local
    }
    models[report.UNTRAINED] = {None: Model(base.base_model, model_fingerprint(base.base_model), asked_as(base))}
    return models


def evaluate_call(config: RunConfig, model: Model, run_name: str, tests: dict[str, Ref] | None = None) -> StageCall:
    """How a model is evaluated: ``config.student_eval``'s decoding on every test set (or on ``tests``,
    e.g. the validation questions), under its run name."""
    decoding = config.student_eval.model_dump(include={"max_tokens", "samples", "temperature", "vllm", "max_questions"})
    fields = config.test_fields if tests is None else {}
    settings = EvaluateSettings(model=model.path, model_name=run_name, fields=fields, **model.asked, **decoding)
    refs = test_refs(config) if tests is None else tests
    return stage_call(config, "evaluate", settings, refs, {"model": model.fingerprint}, f"evaluate {run_name}")


class Student(NamedTuple):
    """One (method, seed): its training and, with a validation split, each epoch's checkpoint scored on
    the validation questions and the choice among them; ``model`` is what the test sets evaluate."""

    train: StageCall
    validations: dict[str, StageCall]  # checkpoint (epoch-N) -> its evaluation on the validation questions
    choose: StageCall | None
    model: Model

    @property
    def calls(self) -> list[StageCall]:
        return [self.train, *self.validations.values(), *([self.choose] if self.choose else [])]


def plan_student(
    config: RunConfig, settings: TrainSettings, trainset: Ref, validation: Ref | None, name: str, seed: int
) -> Student:
    """train [-> evaluate every epoch on the validation questions -> choose the best]; ``name`` is the
    (cell and) method."""
    asked, run_name = asked_as(settings), f"{name}-seed{seed}"
    if validation is not None:  # every epoch is kept, for the choice
        settings = settings.model_copy(update={"loop": settings.loop.model_copy(update={"keep_epochs": True})})
    train = train_call(config, settings, trainset, f"train {name} seed {seed}")
    if validation is None:
        return Student(train, {}, None, Model(train.ref.input_path, train.fingerprint, asked))
    folder = output_ref(train, "checkpoints").input_path
    validations = {
        checkpoint: evaluate_call(
            config,
            Model(folder / checkpoint, f"{train.fingerprint}/{checkpoint}", asked),
            f"{run_name} {checkpoint}",
            {"validation": validation},
        )
        for checkpoint in (f"epoch-{e}" for e in range(1, settings.loop.epochs + 1))
    }
    scores = {checkpoint: output_ref(call, "predictions") for checkpoint, call in validations.items()}
    inputs = {"checkpoints": output_ref(train, "checkpoints")} | scores
    choose = stage_call(config, "choose", ChooseSettings(), inputs, {}, f"choose {name} seed {seed}")
    return Student(train, validations, choose, Model(choose.ref.input_path, choose.fingerprint, asked))


def export_call(
    config: RunConfig, student: Student, method: str, evaluation: StageCall, trainset: Ref, data: str, name: str
) -> StageCall:
    """The chosen student as a folder with its model card (only with a validation split: the card
    states the kept checkpoint)."""
    settings = ExportSettings(
        name=name,
        method=method,
        base_model_id=model_id(student.train.settings.base_model),
        data=data,
        train=student.train.settings,
    )
    inputs = {
        "model": student.choose.ref,
        "checkpoint_scores": output_ref(student.choose, "checkpoint_scores"),
        "predictions": output_ref(evaluation, "predictions"),
        "trainset": trainset,
    }
    return stage_call(config, "export", settings, inputs, {}, f"export {name}")


def evaluation_calls(config: RunConfig, models: ModelRuns) -> dict[tuple[str, int | None], StageCall]:
    """Every (model, seed) on every test set."""
    return {
        (name, seed): evaluate_call(config, model, name if seed is None else f"{name}-seed{seed}")
        for name, runs in models.items()
        for seed, model in runs.items()
    }


class DistillPlan(NamedTuple):
    source: StageCall  # sample or import
    curation: Curation
    students: dict[tuple[str, int], Student]  # (method, seed)
    evaluations: dict[tuple[str, int | None], StageCall]  # (model, seed): references, then students
    exports: dict[tuple[str, int], StageCall]  # (method, seed): with a validation split
    teacher_fps: dict[str, str]

    @property
    def calls(self) -> list[StageCall]:
        students = [call for student in self.students.values() for call in student.calls]
        return [self.source, *self.curation, *students, *self.evaluations.values(), *self.exports.values()]


def data_description(config: DistillConfig) -> str:
    """Where a distillation's rationales come from, as a model card says it."""
    if config.sample is None:
        return f"Recorded rationales from `{config.recorded.name}` ({config.recorded_as.teacher_name})"
    teachers = ", ".join(model_id(t.model) if t.backend == "vllm" else t.name for t in config.teachers)
    return f"Rationales sampled from {teachers} on the questions of `{config.train_questions.name}`"


def plan(config: DistillConfig) -> DistillPlan:
    """Every stage a distillation runs, with its fingerprint, before anything runs."""
    teacher_fps = {t.name: teacher_identity(t) for t in config.teachers}
    source = plan_source(config, teacher_fps)
    curation = plan_curation(config, source.ref)
    trainset = curation.materialize.ref
    students = {
        (name, seed): plan_student(config, method.for_seed(seed), trainset, curation.validation, name, seed)
        for name, method in config.students.items()
        for seed in method.seeds
    }
    base = next(iter(config.students.values())).train
    models = reference_models(config, config.teachers, teacher_fps, base)
    for (name, seed), student in students.items():
        models.setdefault(name, {})[seed] = student.model
    evaluations = evaluation_calls(config, models)
    data, base_name = data_description(config), model_id(base.base_model).split("/")[-1]
    exports = {
        (name, seed): export_call(
            config, student, name, evaluations[name, seed], trainset, data, f"{base_name}-{name}-seed{seed}"
        )
        for (name, seed), student in students.items()
        if student.choose is not None
    }
    return DistillPlan(source, curation, students, evaluations, exports, teacher_fps)
