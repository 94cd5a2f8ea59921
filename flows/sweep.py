"""The CoT-factor sweep (arXiv 2502.18001): which supervision suits this student, and is the winner
really better? One flow run over teacher x CoT format x granularity x method x seed.

    python -m flows.sweep --config sweep.json    any SweepConfig
    python -m flows.demo --sweep                 the demo world's sweep

Each *cell* is one source of rationales: a teacher prompted in one (format, granularity), sampled
once whatever the number of methods and seeds that use it, or a recorded file (imported, with its
format and granularity on every row). Each cell's rationales are curated by the same planned chain
as a distillation's (``flows.plan.plan_curation``) into its own training set; every (cell, method,
seed) is its own cached train and evaluate stage, so adding a cell trains and evaluates only that
cell. The plan (every stage's fingerprint and whether it is stored) is stated before anything runs,
the run executes exactly its calls, and ``budget`` caps the train and evaluate stages a run may
execute: the runs past it are listed as left out, not silently dropped.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from prefect import flow
from pydantic import BaseModel, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from data_schemas import exit_invalid
from flows.config import RunConfig, StudentMethod, partial
from flows.plan import (
    Curation,
    StageCall,
    Student,
    evaluate_call,
    file_ref,
    plan_curation,
    plan_student,
    reference_models,
    stage_call,
)
from flows.publish import publish_plan, publish_sweep
from flows.runner import (
    announce,
    run_call,
    run_curation,
    run_side_by_side,
    run_students,
    warn_small_training_sets,
)
from mcckd import plots, report, sweep
from mcckd.paths import PROJECT_ROOT
from mcckd.settings import Settings
from mcckd.stages.holdout import HoldoutSettings
from mcckd.stages.import_recorded import ImportSettings
from mcckd.stages.sample import PromptSpec, SampleSettings
from mcckd.teachers import Sampling, TeacherSpec, teacher_identity


class RecordedCell(Settings):
    """A cell whose rationales exist already (e.g. ``../shared/data/cot-factors``): imported, not sampled."""

    file: Path = Field(description="rationales: MCC-KD JSON, {instruction, output} lists, JSONL or Parquet")
    teacher: str = Field("recorded", description="who wrote them (a label: the heatmaps' panels)")
    cot_format: str
    granularity: str
    labels: Path | None = Field(None, description="gold answers for a file without them, joined on question text")


# The sample stage's settings a sampled cell shares with every other (its teacher and prompt are the cell's).
CellSampling = partial(
    SampleSettings,
    "CellSampling",
    "How every sampled cell's teacher samples: rationales per question, decoding, seed, engines.",
    num_samples=4,
    sampling=Sampling(),
    seed=0,
    engines=1,
)


class SweepConfig(RunConfig):
    report_dir: Path = Field(PROJECT_ROOT / "runs" / "sweep", description="sweep.md, sweep.json, heatmaps")
    train_questions: Path | None = Field(None, description="questions the sampled cells' teachers answer")
    teachers: list[TeacherSpec] = Field([], description="sampled cells: every teacher x cot_formats x granularities")
    cot_formats: list[str] = Field([], description="plain, subq, rar, symbolic")
    granularities: list[str] = Field([], description="terse (1) to detailed")
    extra_cells: list[tuple[str, str]] = Field(
        [], description="(format, granularity) cells beyond the grid, per teacher"
    )
    template: str = Field("demo_teacher", description="the teachers' prompt template (prompts/)")
    sample: CellSampling = Field(CellSampling(), description="how each sampled cell's teacher samples")
    recorded: list[RecordedCell] = Field([], description="cells imported from files")
    methods: dict[str, StudentMethod] = Field(
        {}, description="name -> method and seeds (Std-CoT: alpha 0; MCC-KD: alpha > 0); none = data statistics only"
    )
    tokenizer: Path | None = Field(None, description="for lengths in tokens; default: the first method's base model")
    rank_on: str | None = Field(None, description="test set that picks the recommended cell; default: the first")
    budget: int | None = Field(
        None, ge=0, description="at most this many student stages (train, validation, choose, evaluate) to execute"
    )
    axes: dict[str, list[Any]] = Field(
        {},
        description="further settings to vary, each combination a variant of every cell: a curation setting "
        "(select.k, judge.*, decontaminate.*, materialize.*, validation.fraction) or a student one under train. "
        "(train.loop.alpha, train.loop.epochs, train.loop.learning_rate, ...), applied to every method; "
        'e.g. {"select.k": [2, 4], "train.loop.alpha": [0, 0.1, 1.0]} (alpha 0 is Std-CoT)',
    )

    @model_validator(mode="after")
    def _cells(self) -> SweepConfig:
        grid = bool(self.teachers or self.cot_formats or self.granularities or self.extra_cells)
        has_cells = (self.cot_formats and self.granularities) or self.extra_cells
        if grid and not (self.teachers and has_cells and self.train_questions):
            raise ValueError(
                "sampled cells need teachers, cot_formats x granularities (or extra_cells) and train_questions"
            )
        if not grid and not self.recorded:
            raise ValueError("a sweep needs cells: teachers x cot_formats x granularities, or recorded files")
        if self.tokenizer is None and not self.methods:
            raise ValueError("give a tokenizer (the student's) when no method is trained")
        if self.rank_on is not None and self.rank_on not in self.test_sets:
            raise ValueError(f"rank_on {self.rank_on!r} is not a test set ({sorted(self.test_sets)})")
        names = [c.name for c, _ in cell_sources(self)]
        if len(set(names)) != len(names):
            raise ValueError(f"two cells share a (teacher, format, granularity): {names}")
        for path, values in self.axes.items():
            if not values:
                raise ValueError(f"axes.{path}: give at least one value")
            for value in values:  # each value is checked against its setting's own bounds
                apply_variant(self, {path: value})
        return self


def cell_sources(config: SweepConfig) -> list[tuple[sweep.Cell, TeacherSpec | RecordedCell]]:
    """Every cell in grid order (teacher, format, granularity), then the recorded ones."""
    styles = [(fmt, level) for fmt in config.cot_formats for level in config.granularities]
    styles += [s for s in config.extra_cells if s not in styles]
    cells = [(sweep.Cell(t.name, fmt, level), t) for t in config.teachers for fmt, level in styles]
    return cells + [(sweep.Cell(r.teacher, r.cot_format, r.granularity, recorded=True), r) for r in config.recorded]


def source_call(config: SweepConfig, cell: sweep.Cell, source: TeacherSpec | RecordedCell) -> StageCall:
    """The stage that brings a cell's rationales in: import for a recorded cell, sample otherwise."""
    label = f"{'import' if isinstance(source, RecordedCell) else 'sample'} {cell.name}"
    if isinstance(source, RecordedCell):
        settings = ImportSettings(teacher_name=cell.teacher, cot_format=cell.cot_format, granularity=cell.granularity)
        inputs = {"recorded": file_ref(source.file)}
        if source.labels is not None:
            inputs["labels"] = file_ref(source.labels)
        return stage_call(config, "import", settings, inputs, {}, label)
    settings = SampleSettings(
        teachers=[source],
        prompts=[PromptSpec(template=config.template, cot_format=cell.cot_format, granularity=cell.granularity)],
        **config.sample.model_dump(),
    )
    identity = {f"teacher:{source.name}": teacher_identity(source)}
    return stage_call(config, "sample", settings, {"questions": file_ref(config.train_questions)}, identity, label)


CURATION = ("judge", "select", "decontaminate", "materialize", "validation")  # RunConfig's curation settings


def with_setting(model: BaseModel, path: str, value: Any, where: str) -> BaseModel:
    """A validated copy of ``model`` with the dotted ``path`` set to ``value``: a bad value or an unknown
    setting is one error naming ``where`` (the axis)."""
    data = model.model_dump()
    node = data
    *parents, leaf = path.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise ValueError(f"{where}: {type(model).__name__} has no settings group {key!r}")
        node = node[key]
    if leaf not in node:
        raise ValueError(f"{where}: {type(model).__name__} has no setting {path!r}")
    node[leaf] = value
    try:
        return type(model).model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ValueError(f"{where} = {value!r}: {problems}") from None


def apply_variant(config: SweepConfig, variant: dict[str, Any]) -> tuple[SweepConfig, dict[str, StudentMethod]]:
    """The run config (curation settings) and the methods (student settings) of one variant."""
    updates: dict[str, BaseModel] = {}
    methods = dict(config.methods)
    for path, value in variant.items():
        group, _, rest = path.partition(".")
        where = f"axes.{path}"
        if group in CURATION and rest:
            current = updates.get(group) or getattr(config, group) or HoldoutSettings()  # validation may be off
            updates[group] = with_setting(current, rest, value, where)
        elif group == "train" and rest:
            methods = {
                name: m.model_copy(update={"train": with_setting(m.train, rest, value, where)})
                for name, m in methods.items()
            }
        else:
            raise ValueError(f"{where}: an axis is a curation setting ({', '.join(CURATION)}) or train.*")
    return config.model_copy(update=updates), methods


def variants(config: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of the axes' values, in order (one empty variant when there are no axes)."""
    return [dict(zip(config.axes, values, strict=True)) for values in itertools.product(*config.axes.values())]


def variant_label(variant: dict[str, Any]) -> str:
    """``k=4 alpha=0.1``: each axis by its last name."""
    return " ".join(f"{path.rsplit('.', 1)[-1]}={value}" for path, value in variant.items())


Run = tuple[sweep.Cell, str, int]  # (cell with its variant, method, seed)


class SweepPlan(NamedTuple):
    """Every stage the sweep needs; the (cell, method, seed) runs past the budget are left out. A cell
    here carries its variant: curations by the curation settings of theirs, runs by all of them."""

    sources: dict[sweep.Cell, StageCall]
    curations: dict[sweep.Cell, tuple[sweep.Cell, Curation]]  # curation cell -> (its source's cell, curation)
    references: dict[tuple[str, None], StageCall]  # the teachers' and the untrained base's evaluations
    students: dict[Run, Student]
    evaluations: dict[Run, StageCall]
    left_out: dict[Run, list[StageCall]]  # a run's calls over the budget

    @property
    def calls(self) -> list[StageCall]:
        """What the run executes, in order."""
        curations = [call for _, curation in self.curations.values() for call in curation]
        students = [call for student in self.students.values() for call in student.calls]
        runs = [*self.references.values(), *students, *self.evaluations.values()]
        calls = [*self.sources.values(), *curations, *runs]
        unique: dict[tuple[str, str], StageCall] = {}  # variants that differ from select on share a judge
        for call in calls:
            unique.setdefault((call.stage, call.fingerprint), call)
        return list(unique.values())

    def rows(self) -> list[dict]:
        """The plan table: every call, and the left-out ones as such."""
        left = [call.row() | {"state": "left out (budget)"} for calls in self.left_out.values() for call in calls]
        return [call.row() for call in self.calls] + left


def plan_sweep(config: SweepConfig) -> SweepPlan:
    """Every stage the sweep needs, with its fingerprint, before anything runs; the budget is spent
    on the reference evaluations first, then run by run in cell order."""
    sources = {cell: source_call(config, cell, source) for cell, source in cell_sources(config)}
    curations: dict[sweep.Cell, tuple[sweep.Cell, Curation]] = {}
    runs: list[tuple[sweep.Cell, Curation, dict[str, StudentMethod]]] = []  # (run cell, its curation, methods)
    for cell, call in sources.items():
        for variant in variants(config):
            run_config, methods = apply_variant(config, variant)
            curated = {k: v for k, v in variant.items() if k.split(".")[0] in CURATION}
            curation_cell = replace(cell, variant=variant_label(curated))
            if curation_cell not in curations:
                curation = plan_curation(run_config, call.ref, label=curation_cell.name)
                curations[curation_cell] = (cell, curation)
            runs.append((replace(cell, variant=variant_label(variant)), curations[curation_cell][1], methods))
    references, students, evaluations, left_out = {}, {}, {}, {}
    budget = config.budget
    if config.methods:
        teachers = {t.name: teacher_identity(t) for t in config.teachers}
        base = next(iter(config.methods.values())).train
        for name, model in reference_models(config, config.teachers, teachers, base).items():
            references[name, None] = call = evaluate_call(config, model[None], name)
            budget = _spend(budget, [call])
    for cell, curation, methods in runs:
        for method, spec in methods.items():
            for seed in spec.seeds:
                name, trainset = f"{cell.name} {method}", curation.materialize.ref
                student = plan_student(config, spec.for_seed(seed), trainset, curation.validation, name, seed)
                evaluate = evaluate_call(config, student.model, f"{name}-seed{seed}")
                needed = [c for c in (*student.calls, evaluate) if not c.stored]
                if budget is not None and len(needed) > budget:
                    left_out[cell, method, seed] = [*student.calls, evaluate]
                    continue
                budget = _spend(budget, needed)
                students[cell, method, seed], evaluations[cell, method, seed] = student, evaluate
    return SweepPlan(sources, curations, references, students, evaluations, left_out)


def _spend(budget: int | None, calls: list[StageCall]) -> int | None:
    return None if budget is None else max(0, budget - sum(not c.stored for c in calls))


@flow(name="sweep", log_prints=True)
def cot_sweep(config: SweepConfig) -> dict:
    """Run the grid of ``config`` (reusing every stored stage) and write the comparison report."""
    p = plan_sweep(config)
    rows = p.rows()
    announce(p.calls, "sweep")
    tqdm.write(f"sweep: {len(p.left_out)} runs left out by the budget")
    publish_plan(rows, "sweep-plan")
    over = f"over the budget of {config.budget} train + evaluate stages"
    left_out = [f"{cell.name} {method}-seed{seed}: {over}" for cell, method, seed in p.left_out]

    data: dict[sweep.Cell, sweep.CellData] = {}
    for source in p.sources.values():
        run_call(config, source)
    for cell, (source_cell, curation) in p.curations.items():
        run_curation(config, curation)
        source = p.sources[source_cell]
        data[cell] = sweep.CellData(cell, source.out, curation.judge.out, curation.select.out, curation.materialize.out)
    tokenizer = _tokenizer(config)
    data_rows = [sweep.data_statistics(d, tokenizer) for d in data.values()]
    empty = [d.cell for d in data.values() if report.stage_summary(d.trainset)["questions"] == 0]  # in cell order
    left_out += [f"{c.name}: no training data (every rationale was rejected; see its ledger)" for c in empty]
    usable = {cell.name: d.trainset for cell, d in data.items() if cell not in empty}
    warnings = warn_small_training_sets(config.methods, usable, config.min_rationales)
    empty_sets = {p.curations[cell][1].materialize.out for cell in empty}
    students = {run: s for run, s in p.students.items() if s.train.inputs["trainset"].path not in empty_sets}
    run_students(config, students)
    # The students first (what a search needs), then the references they are read against: none
    # trained, none evaluated.
    evaluations = {run: p.evaluations[run] for run in students} | (p.references if students else {})
    evaluated = run_side_by_side(config, evaluations, config.parallel_evals)

    cell_runs: dict[tuple[sweep.Cell, str], sweep.CellRuns] = {}
    for (cell, method, seed), student in students.items():
        entry = cell_runs.setdefault((cell, method), sweep.CellRuns(cell, method))
        entry.train[seed] = student.train.out
        entry.evaluate[seed] = evaluated[cell, method, seed].path
    references = {key[0]: ref.path for key, ref in evaluated.items() if key in p.references}
    test_sets = sorted(config.test_sets, key=plots.set_order)
    rank_on = config.rank_on or next(iter(config.test_sets), None)
    summary = sweep.summarize(list(cell_runs.values()), references, test_sets, rank_on)
    summary |= {"data": data_rows, "left_out": left_out, "warnings": warnings}
    cells = list(dict.fromkeys(cell for cell, _, _ in p.students))  # every run's cell, variant and all
    path = sweep.write_report(config.report_dir, rows, summary, cells=cells)
    publish_sweep(config.report_dir, path, summary)
    return summary


def _tokenizer(config: SweepConfig):
    from transformers import AutoTokenizer

    from mcckd.models import resolve_model

    path = config.tokenizer or resolve_model(next(iter(config.methods.values())).train.base_model)
    return AutoTokenizer.from_pretrained(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="a SweepConfig as JSON")
    args = parser.parse_args()
    try:
        config = SweepConfig.model_validate_json(args.config.read_text())
    except ValidationError as error:
        exit_invalid("flows.sweep", str(args.config), error)
    print(sweep.console_summary(cot_sweep(config)))
    print(f"\nreport: {config.report_dir / 'sweep.md'}")


if __name__ == "__main__":
    main()
