"""The plan of a run: every stage call (stage, settings, inputs, fingerprint, output folder), computed
from the config before anything runs.

``distill`` and the sweep execute their plan's calls and nothing else, so what a run writes is what
its plan says: the console's "N stored, M to run", the sweep's budget and the plan table in the UI
count the same calls the run executes. The curation chain, a training and an evaluation are each
planned by one function here, whichever flow uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel

from flows.config import DistillConfig, RunConfig
from mcckd import report
from mcckd.models import model_fingerprint
from mcckd.stages import STAGES, stage_fingerprint
from mcckd.stages.evaluate import EvaluateSettings
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


class Curation(NamedTuple):
    """The curation stages of one source of rationales, in the order they run."""

    judge: StageCall
    select: StageCall
    decontaminate: StageCall  # selected, less the rationales of questions that overlap a test set
    materialize: StageCall


def plan_curation(config: RunConfig, samples: Ref, label: str = "") -> Curation:
    """judge -> select -> decontaminate (against every test set, read with ``test_fields``) ->
    materialize, on one source's samples."""
    suffix = f" {label}" if label else ""
    judge = stage_call(config, "judge", config.judge, {"samples": samples}, {}, f"judge{suffix}")
    select = stage_call(config, "select", config.select, {"judged": judge.ref}, {}, f"select{suffix}")
    decontaminate = stage_call(
        config,
        "decontaminate",
        config.decontaminate.model_copy(update={"fields": config.test_fields}),
        {"selected": select.ref} | test_refs(config),
        {},
        f"decontaminate{suffix}",
    )
    materialize = stage_call(
        config, "materialize", config.materialize, {"selected": decontaminate.ref}, {}, f"materialize{suffix}"
    )
    return Curation(judge, select, decontaminate, materialize)


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


def trained_model(call: StageCall, settings: TrainSettings) -> Model:
    return Model(call.ref.input_path, call.fingerprint, asked_as(settings))


def evaluate_call(config: RunConfig, model: Model, run_name: str) -> StageCall:
    """How a model is evaluated: ``config.student_eval``'s decoding on every test set, under its run name."""
    decoding = config.student_eval.model_dump(include={"max_tokens", "samples", "temperature", "vllm", "max_questions"})
    settings = EvaluateSettings(
        model=model.path, model_name=run_name, fields=config.test_fields, **model.asked, **decoding
    )
    return stage_call(
        config, "evaluate", settings, test_refs(config), {"model": model.fingerprint}, f"evaluate {run_name}"
    )


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
    trains: dict[tuple[str, int], StageCall]  # (method, seed)
    evaluations: dict[tuple[str, int | None], StageCall]  # (model, seed): references, then students
    teacher_fps: dict[str, str]

    @property
    def calls(self) -> list[StageCall]:
        return [self.source, *self.curation, *self.trains.values(), *self.evaluations.values()]


def plan(config: DistillConfig) -> DistillPlan:
    """Every stage a distillation runs, with its fingerprint, before anything runs."""
    teacher_fps = {t.name: teacher_identity(t) for t in config.teachers}
    source = plan_source(config, teacher_fps)
    curation = plan_curation(config, source.ref)
    trainset = curation.materialize.ref
    trains = {
        (name, seed): train_call(config, method.for_seed(seed), trainset, f"train {name} seed {seed}")
        for name, method in config.students.items()
        for seed in method.seeds
    }
    base = next(iter(config.students.values())).train
    models = reference_models(config, config.teachers, teacher_fps, base)
    for (name, seed), call in trains.items():
        models.setdefault(name, {})[seed] = trained_model(call, config.students[name].train)
    return DistillPlan(source, curation, trains, evaluation_calls(config, models), teacher_fps)
