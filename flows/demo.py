"""The main job: distil the demo teacher into the demo student with Std-CoT and MCC-KD.

    python -m flows.demo            (the README's first command runs this after set-up)

Everything is local: questions come from the demo world's generator, the teacher and the student
base are the committed models under ``assets/demo``. The figures land in ``runs/demo/report.md``
and ``runs/demo/metrics.json``; stage outputs are cached in ``runs/store``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prefect import flow, task
from pydantic import BaseModel, Field

from flows.distill import DistillConfig, StudentEval, StudentMethod, distill
from mcckd import report
from mcckd.demo_world.assets import STUDENT_BASE_DIR, TEACHER_DIR
from mcckd.demo_world.problems import SPLITS, write_question_sets
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


class DemoSettings(BaseModel):
    """The demo's size: a cold demo took 8 min 37 s on 2 AMX cores (two sampling engines, packed training,
    evaluations two at a time), longer on AVX2 (docs/demo_world.md: time)."""

    # 2,400 questions for 5 epochs, not 600 for 20: the same ~720 steps, and Std-CoT id 0.85-0.89 over
    # three seeds instead of 0.5 (README: the demo world, distinct questions).
    train_questions: int = 2400
    test_questions: int = 400  # per split: at 200, per-question noise alone is a 0.03 sd at 0.7
    data_seed: int = 0  # draws the questions and the teacher's samples
    # (CoT format, granularity) prompts to the teacher (arXiv 2502.18001); "any" lets it choose.
    # Plain-2 walks every sentence of the question, asides included, which is what lets this student
    # walk four events (README: the demo world).
    cot_styles: list[tuple[str, str]] = Field([("plain", "2")], description="(CoT format, granularity) prompts")
    num_samples: int = Field(4, description="rationales per question and CoT style")
    temperature: float = 0.8
    # The demo teacher keeps one core busy: two engines, one core each, sample twice as fast.
    sample_engines: int = Field(2, ge=1, description="teacher engines side by side (each gets cores / this)")
    k: int = 2  # walked rationales are long: two a question keep a cold demo near 15 minutes (docs/demo_world.md)
    epochs: int = 5
    alpha: float = 0.05
    questions_per_batch: int = 16
    learning_rate: float = 2e-3
    dev_fraction: float = 0.05  # held-out questions that pick the best epoch's weights
    seeds: list[int] = Field([0], min_length=1, description="training seeds of each student method")
    eval_samples: int = Field(1, ge=1, description="1 = greedy evaluation; n > 1 = self-consistency over n")
    parallel_trains: int = Field(2, ge=1, description="student trainings at once (each gets cores / this)")
    parallel_evals: int = Field(2, ge=1, description="evaluations at once (each gets cores / this)")


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


def demo_methods(loop: TrainConfig, alpha: float, seeds: list[int]) -> dict[str, StudentMethod]:
    """Std-CoT and MCC-KD (at ``alpha``) on the demo student base, each with ``seeds``."""
    return {
        name: StudentMethod(
            train=TrainSettings(base_model=STUDENT_BASE_DIR, loop=loop.model_copy(update={"alpha": a})), seeds=seeds
        )
        for name, a in (("std_cot", 0.0), ("mcc_kd", alpha))
    }


def demo_config(settings: DemoSettings, questions: Path, store: Path, report_dir: Path) -> DistillConfig:
    loop = TrainConfig(
        epochs=settings.epochs,
        questions_per_batch=settings.questions_per_batch,
        learning_rate=settings.learning_rate,
        dev_fraction=settings.dev_fraction,
    )
    return DistillConfig(
        store=store,
        report_dir=report_dir,
        train_questions=questions / "train.parquet",
        test_sets=demo_test_sets(questions),
        sample=SampleSettings(
            teachers=[DEMO_TEACHER],
            prompts=[PromptSpec(cot_format=fmt, granularity=level) for fmt, level in settings.cot_styles],
            num_samples=settings.num_samples,
            sampling=Sampling(temperature=settings.temperature),
            seed=settings.data_seed,
            engines=settings.sample_engines,
        ),
        select=SelectSettings(k=settings.k),
        decontaminate=WHOLE_QUESTIONS,
        students=demo_methods(loop, settings.alpha, settings.seeds),
        student_eval=StudentEval(samples=settings.eval_samples, vllm=SMALL_ENGINE),
        parallel_trains=settings.parallel_trains,
        parallel_evals=settings.parallel_evals,
    )


class DemoSweep(BaseModel):
    """The demo world's CoT-factor sweep: the demo teacher in 2 formats x 2 granularities, Std-CoT and
    MCC-KD, 2 seeds each; 300 questions and 12 epochs, so that its 16 trainings fit a CPU machine
    (too few for the walked rationales of the asides world to be learned: README, the sweep)."""

    train_questions: int = 300
    test_questions: int = 100
    data_seed: int = 0
    cot_formats: list[str] = ["plain", "subq"]
    granularities: list[str] = ["1", "2"]
    extra_cells: list[tuple[str, str]] = Field([], description="(format, granularity) cells beyond the grid")
    num_samples: int = 3
    sample_engines: int = 2
    k: int = 2
    epochs: int = 12
    alpha: float = 0.05
    learning_rate: float = 2e-3
    seeds: list[int] = [0, 1]
    parallel_trains: int = 2
    parallel_evals: int = 2
    budget: int | None = None


def demo_sweep_config(
    settings: DemoSweep,
    store: Path = PROJECT_ROOT / "runs" / "store",
    report_dir: Path = PROJECT_ROOT / "runs" / "sweep",
):
    """The demo world wired into ``flows.sweep.SweepConfig``."""
    from flows.sweep import SweepConfig

    questions = demo_questions.fn(store, settings.train_questions, settings.test_questions, settings.data_seed)
    loop = TrainConfig(epochs=settings.epochs, learning_rate=settings.learning_rate, dev_fraction=0.05)
    return SweepConfig(
        store=store,
        report_dir=report_dir,
        train_questions=questions / "train.parquet",
        test_sets=demo_test_sets(questions),
        teachers=[DEMO_TEACHER],
        cot_formats=settings.cot_formats,
        granularities=settings.granularities,
        extra_cells=settings.extra_cells,
        num_samples=settings.num_samples,
        sampling=Sampling(temperature=0.8),
        seed=settings.data_seed,
        sample_engines=settings.sample_engines,
        select=SelectSettings(k=settings.k),
        decontaminate=WHOLE_QUESTIONS,
        methods=demo_methods(loop, settings.alpha, settings.seeds),
        student_eval=StudentEval(vllm=SMALL_ENGINE),
        parallel_trains=settings.parallel_trains,
        parallel_evals=settings.parallel_evals,
        budget=settings.budget,
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
    from flows.sweep import cot_sweep

    return cot_sweep(demo_sweep_config(settings, store, report_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-dir", type=Path, default=PROJECT_ROOT / "runs" / "demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of each student method")
    args = parser.parse_args()
    started = time.perf_counter()
    metrics = demo(settings=DemoSettings(seeds=args.seeds), report_dir=args.report_dir)
    print(report.console_summary(metrics))
    print(f"\nflow time: {time.perf_counter() - started:.0f} s; report: {args.report_dir / 'report.md'}")


if __name__ == "__main__":
    main()
