"""The main job: distil the demo teacher into the demo student with Std-CoT and MCC-KD.

    python -m flows.demo            (the README's first command runs this after set-up)
    python -m flows.demo --sweep    the demo world's CoT-factor sweep

Everything is local: questions come from the demo world's generator, the teacher and the student
base are the committed models under ``assets/demo``. The figures land in ``runs/demo/report.md``
and ``runs/demo/metrics.json``; stage outputs are cached in ``runs/store``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prefect import flow, task
from pydantic import Field

from flows.config import DistillConfig, Overrides, RunConfig, StudentEval, partial, std_cot_and_mcc_kd
from flows.distill import distill
from flows.sweep import CellSampling, SweepConfig, cot_sweep
from mcckd import report, sweep
from mcckd.cluster import RaySettings
from mcckd.demo_world.assets import STUDENT_BASE_DIR, TEACHER_DIR
from mcckd.demo_world.problems import SPLITS, TRAIN_FILE, write_question_sets
from mcckd.generation import VllmSettings
from mcckd.paths import PROJECT_ROOT
from mcckd.stages.decontaminate import DecontaminateSettings
from mcckd.stages.sample import PromptSpec, SampleSettings
from mcckd.stages.select import SelectSettings
from mcckd.stages.train import TrainSettings
from mcckd.store import atomic_stage_dir, fingerprint, is_complete
from mcckd.teachers import Sampling, TeacherSpec
from mcckd.training.config import TrainConfig

QUESTIONS_VERSION = 3  # 2: adds test_ood_mixed.parquet; 3: id problems tell asides
# The demo's models are a few MB: half a GiB of KV cache holds every sequence the stages decode at
# once, and allocating it takes no time (the default fraction of RAM would zero GiBs at start-up).
SMALL_ENGINE = VllmSettings(kv_cache_gib=0.5)
# The demo world writes every split from the same templates, so its questions share 8-grams by design
# (2,277 of the 2,400 training questions would go); its generator keeps test questions distinct from
# training ones, and exact copies are what decontamination checks here.
WHOLE_QUESTIONS = DecontaminateSettings(ngram=None)

# The demo teacher keeps one core busy: two engines, one core each, sample twice as fast.
DemoSampling = partial(
    SampleSettings,
    "DemoSampling",
    "How the demo teacher samples (the rest of SampleSettings is fixed by the demo).",
    num_samples=4,
    sampling=Sampling(temperature=0.8),
    engines=2,
    backend="local",
    ray=RaySettings(),
)
# Two trainings and two evaluations side by side, one core each.
SideBySide = partial(
    RunConfig,
    "SideBySide",
    "Stages side by side on the machine's cores.",
    parallel_trains=2,
    parallel_evals=2,
)


class DemoSettings(Overrides):
    """The demo's size: a cold demo took 8 min 37 s on 2 AMX cores (two sampling engines, packed training,
    evaluations two at a time), longer on AVX2 (docs/demo_world.md: time). Every stage setting here is
    the stage's own settings model (or a part of it), bounded and described there."""

    # 2,400 questions for 5 epochs, not 600 for 20: the same ~720 steps, and Std-CoT id 0.85-0.89 over
    # three seeds instead of 0.5 (README: the demo world, distinct questions).
    train_questions: int = Field(2400, ge=1, description="questions generated to distil on")
    test_questions: int = Field(400, ge=1, description="per split: at 200, per-question noise alone is 0.03 sd")
    data_seed: int = Field(0, description="draws the questions and the teacher's samples")
    # (CoT format, granularity) prompts to the teacher (arXiv 2502.18001); "any" lets it choose.
    # Plain-2 walks every sentence of the question, asides included, which is what lets this student
    # walk four events (README: the demo world).
    cot_styles: list[tuple[str, str]] = Field([("plain", "2")], description="(CoT format, granularity) prompts")
    sample: DemoSampling = Field(
        DemoSampling(), description="rationales per question, temperature, engines or a Ray cluster"
    )
    # Walked rationales are long: two a question keep a cold demo within 10 minutes (docs/demo_world.md).
    select: SelectSettings = Field(SelectSettings(k=2), description="K diverse correct rationales per question")
    loop: TrainConfig = Field(
        TrainConfig(alpha=0.05, epochs=5, questions_per_batch=16, learning_rate=2e-3, dev_fraction=0.05),
        description="the students' training loop: MCC-KD with its alpha, Std-CoT the same at alpha 0",
    )
    seeds: list[int] = Field([0], min_length=1, description="training seeds of each student method")
    evaluation: StudentEval = Field(StudentEval(vllm=SMALL_ENGINE), description="how every model is decoded")
    side_by_side: SideBySide = Field(SideBySide(), description="trainings and evaluations at once")


@task(name="demo-questions")
def demo_questions(store: Path, n_train: int, n_test: int, seed: int) -> Path:
    """Generate the question sets once per size and seed (a folder named by their fingerprint)."""
    out = store / "questions" / fingerprint("demo-questions", QUESTIONS_VERSION, n_train, n_test, seed)
    if not is_complete(out):
        with atomic_stage_dir(out, {"stage": "demo-questions", "summary": {}}) as tmp:
            write_question_sets(tmp, n_train, n_test, seed)
    return out


DEMO_TEACHER = TeacherSpec(name="demo-teacher", model=str(TEACHER_DIR), vllm=SMALL_ENGINE)


def demo_test_sets(questions: Path) -> dict[str, Path]:
    return {split: questions / f"test_{split}.parquet" for split in SPLITS}


def demo_config(settings: DemoSettings, questions: Path, store: Path, report_dir: Path) -> DistillConfig:
    return DistillConfig(
        store=store,
        report_dir=report_dir,
        train_questions=questions / TRAIN_FILE,
        test_sets=demo_test_sets(questions),
        sample=SampleSettings(
            teachers=[DEMO_TEACHER],
            prompts=[PromptSpec(cot_format=fmt, granularity=level) for fmt, level in settings.cot_styles],
            seed=settings.data_seed,
            **settings.sample.model_dump(),
        ),
        select=settings.select,
        decontaminate=WHOLE_QUESTIONS,
        students=std_cot_and_mcc_kd(TrainSettings(base_model=STUDENT_BASE_DIR, loop=settings.loop), settings.seeds),
        student_eval=settings.evaluation,
        **settings.side_by_side.model_dump(),
    )


DemoGrid = partial(
    SweepConfig,
    "DemoGrid",
    "The demo sweep's grid, budget and parallelism (the rest of SweepConfig is fixed by the demo).",
    cot_formats=["plain", "subq"],
    granularities=["1", "2"],
    extra_cells=[],
    sample=CellSampling(num_samples=3, sampling=Sampling(temperature=0.8), engines=2),
    budget=None,
    parallel_trains=2,
    parallel_evals=2,
)


class DemoSweep(DemoGrid):
    """The demo world's CoT-factor sweep: the demo teacher in 2 formats x 2 granularities, Std-CoT and
    MCC-KD, 2 seeds each; 300 questions and 12 epochs, so that its 16 trainings fit a CPU machine
    (too few for the walked rationales of the asides world to be learned: README, the sweep)."""

    train_questions: int = Field(300, ge=1, description="questions generated to distil on")
    test_questions: int = Field(100, ge=1, description="per split")
    select: SelectSettings = Field(SelectSettings(k=2), description="K diverse correct rationales per question")
    loop: TrainConfig = Field(
        TrainConfig(alpha=0.05, epochs=12, learning_rate=2e-3, dev_fraction=0.05),
        description="the students' training loop: MCC-KD with its alpha, Std-CoT the same at alpha 0",
    )
    seeds: list[int] = Field([0, 1], min_length=1, description="training seeds of each student method")


def demo_sweep_config(
    settings: DemoSweep,
    store: Path = PROJECT_ROOT / "runs" / "store",
    report_dir: Path = PROJECT_ROOT / "runs" / "sweep",
) -> SweepConfig:
    """The demo world wired into ``flows.sweep.SweepConfig``."""
    # The teacher's sampling seed draws the questions too.
    questions = demo_questions.fn(store, settings.train_questions, settings.test_questions, settings.sample.seed)
    return SweepConfig(
        store=store,
        report_dir=report_dir,
        train_questions=questions / TRAIN_FILE,
        test_sets=demo_test_sets(questions),
        teachers=[DEMO_TEACHER],
        select=settings.select,
        decontaminate=WHOLE_QUESTIONS,
        methods=std_cot_and_mcc_kd(TrainSettings(base_model=STUDENT_BASE_DIR, loop=settings.loop), settings.seeds),
        student_eval=StudentEval(vllm=SMALL_ENGINE),
        **settings.model_dump(include=set(DemoGrid.model_fields)),
    )


@flow(name="demo", log_prints=True)
def demo(
    settings: DemoSettings = DemoSettings(),  # noqa: B008  (pydantic default the Prefect UI can show)
    store: Path = PROJECT_ROOT / "runs" / "store",
    report_dir: Path = PROJECT_ROOT / "runs" / "demo",
) -> dict:
    questions = demo_questions(store, settings.train_questions, settings.test_questions, settings.data_seed)
    return distill(demo_config(settings, questions, store, report_dir))


@flow(name="demo-sweep", log_prints=True)
def demo_sweep(
    settings: DemoSweep = DemoSweep(),  # noqa: B008  (pydantic default the Prefect UI can show)
    store: Path = PROJECT_ROOT / "runs" / "store",
    report_dir: Path = PROJECT_ROOT / "runs" / "sweep",
) -> dict:
    """The demo world's CoT-factor sweep (``flows.sweep``), with every setting in the UI's form."""
    return cot_sweep(demo_sweep_config(settings, store, report_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-dir", type=Path, help="default: runs/demo (runs/sweep with --sweep)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of each student method")
    parser.add_argument("--sweep", action="store_true", help="the demo world's CoT-factor sweep")
    parser.add_argument("--extra-cell", nargs=2, metavar=("FORMAT", "GRANULARITY"), help="--sweep: one more cell")
    args = parser.parse_args()
    where = {"report_dir": args.report_dir} if args.report_dir else {}
    started = time.perf_counter()
    if args.sweep:
        settings = DemoSweep(extra_cells=[tuple(args.extra_cell)] if args.extra_cell else [])
        summary = demo_sweep(settings=settings, **where)
        print(sweep.console_summary(summary))
    else:
        print(report.console_summary(demo(settings=DemoSettings(seeds=args.seeds), **where)))
    print(f"\nflow time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
