"""What a run is configured with: the settings every run shares (``RunConfig``), a distillation
(``DistillConfig``), and the student methods. Each field that belongs to a stage is that stage's own
settings model (``mcckd.stages``), declared and bounded there.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from mcckd.generation import VllmSettings
from mcckd.paths import PROJECT_ROOT
from mcckd.settings import Settings
from mcckd.stages.decontaminate import DecontaminateSettings
from mcckd.stages.holdout import HoldoutSettings
from mcckd.stages.import_recorded import ImportSettings
from mcckd.stages.judge import JudgeSettings
from mcckd.stages.materialize import MaterializeSettings
from mcckd.stages.sample import SampleSettings
from mcckd.stages.select import SelectSettings
from mcckd.stages.train import TrainSettings
from mcckd.teachers import TeacherSpec


class Overrides(Settings):
    """Settings whose nested settings, given as mappings (JSON, ``--settings``, the UI form), override
    fields of their default rather than replace it: ``{"loop": {"epochs": 3}}`` keeps the rest of
    the default loop."""

    @model_validator(mode="before")
    @classmethod
    def _onto_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if isinstance(value, dict) and field is not None and isinstance(field.default, BaseModel):
                merged[name] = _merge(field.default.model_dump(), value)
        return merged


def _merge(base: dict, update: dict) -> dict:
    return {
        k: _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        for k, v in (base | update).items()
    }


def partial(model: type[BaseModel], name: str, doc: str, **defaults: Any) -> type[Overrides]:
    """A settings model with some fields of ``model``, as declared there (type, bounds, description),
    with these defaults: what a flow exposes of a stage's settings without copying their fields."""
    fields = {}
    for field, default in defaults.items():
        info = copy.copy(model.model_fields[field])
        info.default, info.default_factory = default, None
        fields[field] = (info.annotation, info)
    return create_model(name, __doc__=doc, __base__=Overrides, **fields)


class StudentEval(Settings):
    """How every model is decoded at evaluation (each student is asked as it was trained: its
    ``TrainSettings.template`` or ``chat``; the untrained base as the first method's students)."""

    max_tokens: int = Field(192, ge=1, description="longest answer generated")
    samples: int = Field(1, ge=1, description="1 = greedy; n > 1 = self-consistency (majority vote over n)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of self-consistency")
    vllm: VllmSettings = Field(VllmSettings(), description="the evaluation engine (KV cache, dtype, parallelism)")
    max_questions: int | None = Field(None, ge=1, description="only the first N questions of each test set")


class StudentMethod(Settings):
    """One way to train the student (Std-CoT: alpha 0; MCC-KD: alpha > 0) and the seeds to train it with.

    Each (method, seed) is its own cached train and evaluate stage; the report gives every seed and
    the mean, with intervals over seeds and questions.
    """

    train: TrainSettings = Field(description="student base, template and loop (alpha 0 = Std-CoT)")
    seeds: list[int] = Field([0], min_length=1, description="training seeds (TrainConfig.seed of each run)")

    def for_seed(self, seed: int) -> TrainSettings:
        """The train stage's settings of one seed."""
        return self.train.model_copy(update={"loop": self.train.loop.model_copy(update={"seed": seed})})


def std_cot_and_mcc_kd(train: TrainSettings, seeds: list[int]) -> dict[str, StudentMethod]:
    """The two methods the papers compare, on one set of train settings: MCC-KD with the loop's own
    alpha, Std-CoT with the same loop at alpha 0 (so alpha is declared once, in ``TrainConfig``)."""
    plain = train.model_copy(update={"loop": train.loop.model_copy(update={"alpha": 0.0})})
    return {"std_cot": StudentMethod(train=plain, seeds=seeds), "mcc_kd": StudentMethod(train=train, seeds=seeds)}


class StageDeployments(Settings):
    """Deployments of the ``stage`` flow (``flows/stage.py``) that run stages on their own work pools."""

    accelerator: str = Field("stage/stage-gpu", description="runs sample, train and evaluate (a GPU pool)")
    cpu: str = Field("stage/stage-cpu", description="runs judge, select, decontaminate and materialize (a CPU pool)")


class RunConfig(Settings):
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
    validation: HoldoutSettings | None = Field(
        None,
        description="hold out this share of the training questions before curation (never trained on, "
        "decontaminated against like a test set); every student then keeps each epoch's checkpoint and the one "
        "that answers them best is evaluated and exported with a model card. None: the last epoch's model",
    )
    judge: JudgeSettings = Field(JudgeSettings(), description="how answers are read and which rationales count")
    select: SelectSettings = Field(SelectSettings(), description="K diverse correct rationales per question")
    decontaminate: DecontaminateSettings = Field(
        DecontaminateSettings(), description="training questions sharing a word n-gram with a test question are removed"
    )
    materialize: MaterializeSettings = Field(MaterializeSettings(), description="the training set's answer spans")
    evaluate_teachers: bool = Field(
        True,
        description="score each local teacher on the test sets too (the students' ceiling; a large teacher's "
        "evaluation can cost more than the students')",
    )
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
    min_rationales: int = Field(
        50,
        ge=0,
        description="a training set with fewer rationales is reported as too small to mean anything, "
        "before any training (the run goes on)",
    )
    stage_deployments: StageDeployments | None = Field(
        None,
        description="run each stage as a run of these deployments, on their pools' workers (the store must be "
        "shared); None runs every stage under this flow run, on this machine",
    )

    @field_validator("test_sets")
    @classmethod
    def _test_set_names(cls, test_sets: dict[str, Path]) -> dict[str, Path]:
        for reserved, what in (
            ("selected", "the decontaminate stage's training input"),
            ("validation", "the held-out questions"),
        ):
            if reserved in test_sets:
                raise ValueError(f"a test set may not be named {reserved!r} ({what})")
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
        plain = [name for name, m in self.students.items() if not m.train.loop.uses_consistency]
        return self.baseline or (plain[0] if plain else next(iter(self.students)))
