"""The CoT-factor sweep (arXiv 2502.18001): which supervision suits this student, and is the winner
really better? One flow run over teacher x CoT format x granularity x method x seed.

    python -m flows.sweep --demo                 the demo world: 2 formats x 2 granularities x 2 methods x 2 seeds
    python -m flows.sweep --config sweep.json    any SweepConfig

Each *cell* is one source of rationales: a teacher prompted in one (format, granularity), sampled
once whatever the number of methods and seeds that use it, or a recorded file (imported, with its
format and granularity on every row). Each cell's rationales are judged, selected, decontaminated
(against the test sets) and materialized into its own training set; every (cell, method, seed) is
its own cached train and evaluate stage, so adding a cell trains and evaluates only that cell. The
plan (every stage's fingerprint and whether it is stored) is stated before anything runs, and
``budget`` caps the train and evaluate stages a run may execute: the runs past it are listed as left
out, not silently dropped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field, model_validator
from tqdm.auto import tqdm

from flows.distill import (
    Ref,
    RunConfig,
    StudentMethod,
    asked_as,
    curate,
    decontaminate_inputs,
    evaluate_runs,
    evaluate_settings,
    file_ref,
    reference_models,
    run_stage,
    stage_call,
    test_refs,
    train_inputs,
    train_runs,
    with_seed,
)
from mcckd import plots, report, sweep
from mcckd.paths import PROJECT_ROOT
from mcckd.stages.import_recorded import ImportSettings
from mcckd.stages.sample import PromptSpec, SampleSettings
from mcckd.store import is_complete
from mcckd.teachers import Sampling, TeacherSpec, teacher_identity


class RecordedCell(BaseModel):
    """A cell whose rationales exist already (e.g. ``../shared/data/cot-factors``): imported, not sampled."""

    file: Path = Field(description="rationales: MCC-KD JSON, {instruction, output} lists, JSONL or Parquet")
    teacher: str = Field("recorded", description="who wrote them (a label: the heatmaps' panels)")
    cot_format: str
    granularity: str
    labels: Path | None = Field(None, description="gold answers for a file without them, joined on question text")


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
    num_samples: int = Field(4, ge=1, description="rationales per question in each sampled cell")
    sampling: Sampling = Field(Sampling(), description="temperature, top_p, max_tokens of the teachers")
    seed: int = Field(0, description="the teachers' sampling seed")
    sample_engines: int = Field(
        1, ge=1, description="local vLLM teachers on a CPU: engines side by side (SampleSettings.engines)"
    )
    recorded: list[RecordedCell] = Field([], description="cells imported from files")
    methods: dict[str, StudentMethod] = Field(
        {}, description="name -> method and seeds (Std-CoT: alpha 0; MCC-KD: alpha > 0); none = data statistics only"
    )
    tokenizer: Path | None = Field(None, description="for lengths in tokens; default: the first method's base model")
    rank_on: str | None = Field(None, description="test set that picks the recommended cell; default: the first")
    budget: int | None = Field(None, ge=0, description="at most this many train + evaluate stages to execute")

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
        return self


def cell_sources(config: SweepConfig) -> list[tuple[sweep.Cell, TeacherSpec | RecordedCell]]:
    """Every cell in grid order (teacher, format, granularity), then the recorded ones."""
    styles = [(fmt, level) for fmt in config.cot_formats for level in config.granularities]
    styles += [s for s in config.extra_cells if s not in styles]
    cells = [(sweep.Cell(t.name, fmt, level), t) for t in config.teachers for fmt, level in styles]
    return cells + [(sweep.Cell(r.teacher, r.cot_format, r.granularity, recorded=True), r) for r in config.recorded]


def source_stage(
    config: SweepConfig, cell: sweep.Cell, source: TeacherSpec | RecordedCell, identities: dict[str, str]
) -> tuple[str, BaseModel, dict[str, Ref], dict[str, str]]:
    """The stage that brings a cell's rationales in: (stage, settings, inputs, identity)."""
    if isinstance(source, RecordedCell):
        settings = ImportSettings(teacher_name=cell.teacher, cot_format=cell.cot_format, granularity=cell.granularity)
        inputs = {"recorded": file_ref(source.file)}
        if source.labels is not None:
            inputs["labels"] = file_ref(source.labels)
        return "import", settings, inputs, {}
    settings = SampleSettings(
        teachers=[source],
        prompts=[PromptSpec(template=config.template, cot_format=cell.cot_format, granularity=cell.granularity)],
        num_samples=config.num_samples,
        sampling=config.sampling,
        seed=config.seed,
        engines=config.sample_engines,
    )
    inputs = {"questions": file_ref(config.train_questions)}
    return "sample", settings, inputs, {f"teacher:{source.name}": identities[source.name]}


def plan_sweep(
    config: SweepConfig, identities: dict[str, str]
) -> tuple[list[dict], list[tuple[sweep.Cell, str, int]], list[str]]:
    """Every stage the sweep needs, with its fingerprint and whether it is stored, computed before
    anything runs; the (cell, method, seed) runs within ``budget``; and what the budget leaves out."""
    plan: list[dict] = []

    def entry(stage: str, what: str, settings: BaseModel, inputs: dict[str, Ref], identity: dict[str, str]) -> Ref:
        _, _, ref = stage_call(config, stage, settings, inputs, identity)
        plan.append({"stage": stage, "what": what, "fingerprint": ref.fingerprint, "state": _state(ref.path)})
        return ref

    trainsets = {}
    for cell, source in cell_sources(config):
        stage, settings, inputs, identity = source_stage(config, cell, source, identities)
        ref = entry(stage, cell.name, settings, inputs, identity)
        ref = entry("judge", cell.name, config.judge, {"samples": ref}, {})
        ref = entry("select", cell.name, config.select, {"judged": ref}, {})
        ref = entry("decontaminate", cell.name, config.decontaminate, decontaminate_inputs(config, ref), {})
        trainsets[cell] = entry("materialize", cell.name, config.materialize, {"selected": ref}, {})
    budget = config.budget  # the teachers' and the base's evaluations come first
    runs, left_out = [], []
    tests = test_refs(config)
    for model, by_seed in _reference_models(config, identities).items():
        for model_dir, model_fp, asked in by_seed.values():
            settings = evaluate_settings(config, model_dir, model, asked)
            ref = entry("evaluate", model, settings, tests, {"model": model_fp})
            budget = _spend(budget, [ref])
    for cell in trainsets:
        for method, spec in config.methods.items():
            for seed in spec.seeds:
                settings = with_seed(spec.train, seed)
                trained = stage_call(config, "train", settings, *train_inputs(settings, trainsets[cell]))[2]
                name = f"{cell.name} {method}-seed{seed}"
                evaluated = stage_call(
                    config,
                    "evaluate",
                    evaluate_settings(config, trained.input_path, name, asked_as(spec.train)),
                    tests,
                    {"model": trained.fingerprint},
                )[2]
                needed = [r for r in (trained, evaluated) if not is_complete(r.path)]
                if budget is not None and len(needed) > budget:
                    left_out.append(f"{name}: over the budget of {config.budget} train + evaluate stages")
                    state = "left out (budget)"
                else:
                    budget = _spend(budget, needed)
                    runs.append((cell, method, seed))
                    state = None
                for stage, ref in (("train", trained), ("evaluate", evaluated)):
                    plan.append(
                        {
                            "stage": stage,
                            "what": name,
                            "fingerprint": ref.fingerprint,
                            "state": state or _state(ref.path),
                        }
                    )
    return plan, runs, left_out


def _state(path: Path) -> str:
    return "stored (cached)" if is_complete(path) else "to run"


def _spend(budget: int | None, refs: list[Ref]) -> int | None:
    return None if budget is None else max(0, budget - sum(not is_complete(r.path) for r in refs))


def _reference_models(config: SweepConfig, identities: dict[str, str]):
    if not config.methods:
        return {}
    return reference_models(config, config.teachers, identities, next(iter(config.methods.values())).train)


@flow(name="sweep", log_prints=True)
def cot_sweep(config: SweepConfig) -> dict:
    """Run the grid of ``config`` (reusing every stored stage) and write the comparison report."""
    identities = {t.name: teacher_identity(t) for t in config.teachers}
    plan, runs, left_out = plan_sweep(config, identities)
    to_run = [p for p in plan if p["state"] == "to run"]
    tqdm.write(
        f"sweep plan: {len(plan)} stages, {sum(p['state'] == 'stored (cached)' for p in plan)} stored, "
        f"{len(to_run)} to run ({sum(p['stage'] in ('train', 'evaluate') for p in to_run)} train/evaluate), "
        f"{len(left_out)} runs left out by the budget"
    )
    create_table_artifact(key="sweep-plan", table=plan, description="every stage of the sweep, before it ran")

    data: dict[sweep.Cell, sweep.CellData] = {}
    trainsets: dict[sweep.Cell, Ref] = {}
    for cell, source in cell_sources(config):
        stage, settings, inputs, identity = source_stage(config, cell, source, identities)
        source_ref = run_stage(config, stage, settings, inputs, identity, label=f"{stage} {cell.name}")
        curated = curate(config, source_ref, label=cell.name)
        trainsets[cell] = curated.trainset
        data[cell] = sweep.CellData(
            cell, source_ref.path, curated.judged.path, curated.selected.path, curated.trainset.path
        )
    tokenizer = _tokenizer(config)
    data_rows = [sweep.data_statistics(d, tokenizer) for d in data.values()]
    empty = [d.cell for d in data.values() if report.stage_summary(d.trainset)["questions"] == 0]  # in cell order
    left_out += [f"{c.name}: no training data (every rationale was rejected; see its ledger)" for c in empty]
    runs = [r for r in runs if r[0] not in empty]

    jobs = {
        (cell, method, seed): (with_seed(config.methods[method].train, seed), trainsets[cell])
        for cell, method, seed in runs
    }
    trained = train_runs(config, jobs, {k: f"train {k[0].name} {k[1]} seed {k[2]}" for k in jobs})
    models = _reference_models(config, identities) if runs else {}
    for (cell, method, seed), ref in trained.items():
        models.setdefault(f"{cell.name} {method}", {})[seed] = (
            ref.input_path,
            ref.fingerprint,
            asked_as(config.methods[method].train),
        )
    evals = evaluate_runs(config, models)

    cell_runs: dict[tuple[sweep.Cell, str], sweep.CellRuns] = {}
    for (cell, method, seed), ref in trained.items():
        entry = cell_runs.setdefault((cell, method), sweep.CellRuns(cell, method))
        entry.train[seed] = ref.path
        entry.evaluate[seed] = evals[f"{cell.name} {method}"][seed]
    test_sets = sorted(config.test_sets, key=plots.set_order)
    rank_on = config.rank_on or next(iter(config.test_sets), None)
    results = sweep.results(list(cell_runs.values()), test_sets)
    best = sweep.best_cells(list(cell_runs.values()), results, test_sets)
    references = {  # the teachers and the untrained base on the same test sets
        name: {s: float(ok.mean()) for s, (_, ok, _) in report.correctness(by_seed[None]).items()}
        for name, by_seed in evals.items()
        if None in by_seed
    }
    summary = {
        "test_sets": test_sets,
        "rank_on": rank_on,
        "data": data_rows,
        "results": results,
        "best": best,
        "references": references,
        "recommendation": sweep.recommendation(best, rank_on),
        "left_out": left_out,
    }
    config.report_dir.mkdir(parents=True, exist_ok=True)
    if results:
        for name in test_sets:
            untrained = references.get(report.UNTRAINED, {}).get(name)
            plots.plot_sweep_heatmaps(
                results, list(data), name, config.report_dir / sweep.heatmap_file(name), untrained
            )
    path = sweep.write_report(config.report_dir, plan, summary)

    create_table_artifact(key="sweep-data", table=data_rows, description="per cell: the training set it made")
    create_table_artifact(key="sweep-results", table=sweep.result_rows(results), description="per (cell, method)")
    markdown = report.inline_images(path.read_text(), config.report_dir)
    create_markdown_artifact(key="sweep-report", markdown=markdown, description=str(path))
    if results:
        for name in test_sets:
            create_image_artifact(
                image_url=report.data_url(config.report_dir / sweep.heatmap_file(name)),
                key=f"sweep-heatmap-{name.replace('_', '-').lower()}",
                description=f"accuracy on {name} by granularity x format ({config.report_dir})",
            )
    return summary


def _tokenizer(config: SweepConfig):
    from transformers import AutoTokenizer

    from mcckd.models import resolve_model

    path = config.tokenizer or resolve_model(next(iter(config.methods.values())).train.base_model)
    return AutoTokenizer.from_pretrained(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", type=Path, help="a SweepConfig as JSON")
    group.add_argument("--demo", action="store_true", help="the demo world's sweep (flows/demo.py: demo_sweep_config)")
    parser.add_argument("--extra-cell", nargs=2, metavar=("FORMAT", "GRANULARITY"), help="--demo: one more cell")
    args = parser.parse_args()
    # Run as ``python -m flows.sweep`` this module is ``__main__``; the flow and its config class
    # must be the importable ones that demo_sweep_config builds (and Prefect validates against).
    from flows.sweep import SweepConfig, cot_sweep

    if args.demo:
        from flows.demo import DemoSweep, demo_sweep_config

        settings = DemoSweep()
        if args.extra_cell:
            settings = settings.model_copy(update={"extra_cells": [tuple(args.extra_cell)]})
        config = demo_sweep_config(settings)
    else:
        config = SweepConfig.model_validate_json(args.config.read_text())
    summary = cot_sweep(config)
    print("\n" + sweep.data_table(summary["data"]))
    if summary["results"]:
        print("\n" + sweep.accuracy_table(summary["results"], summary["test_sets"]))
        print("\n" + sweep.best_table(summary["best"]))
    print("\n" + "\n".join(summary["recommendation"] + summary["left_out"]))
    print(f"\nreport: {config.report_dir / 'sweep.md'}")


if __name__ == "__main__":
    main()
