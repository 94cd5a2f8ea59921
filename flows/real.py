"""The papers' experiments on a real student: SmolLM2-135M-Instruct, real teacher rationales, real benchmarks.

    python -m flows.real                 MCC-KD against Std-CoT (make real)
    python -m flows.real --sweep         the CoT-factor sweep over the six recorded cells (make real-sweep)
    python -m flows.real --self-distill  SmolLM2 samples its own rationales through vLLM (make real-self)

Inputs are read in place from the papers' data (``mcckd.paths.SHARED_DATA``: ``../shared/data``):
the MCC-KD authors' 700 SVAMP questions with ten rationales each from their API teacher, the
cot-factors files (arXiv 2502.18001), SVAMP dev (in distribution), ASDiv and GSM8K (out of
distribution). Each flow only wires these into ``flows.distill`` / ``flows.sweep``; every stage is
the ordinary cached one, so a rerun with one setting changed re-runs what depends on it. The default
sizes fit a 2-core CPU in about half an hour (docs/real_student.md says what they cost and what was
tried); on a GPU raise them in the UI's form or with ``--settings``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Literal

from prefect import flow, task
from pydantic import BaseModel, Field

from flows.distill import DistillConfig, StudentEval, StudentMethod, distill
from mcckd import report
from mcckd.generation import VllmSettings
from mcckd.paths import PROJECT_ROOT, SHARED_DATA
from mcckd.readers import read_questions
from mcckd.stages.import_recorded import ImportSettings
from mcckd.stages.sample import PromptSpec, SampleSettings
from mcckd.stages.select import SelectSettings
from mcckd.stages.train import TrainSettings
from mcckd.store import atomic_stage_dir, fingerprint, is_complete, path_fingerprint
from mcckd.teachers import Sampling, TeacherSpec
from mcckd.training.config import TrainConfig

# cot-factors file -> (CoT format, granularity): plain levels 1/3/5; sub-question, rephrase-and-respond
# and symbolic at level 3 (the files' own names: BSM, RaR, SYM).
COT_FACTOR_CELLS = {
    "SVAMP_ChatGPT_level1_ranked.json": ("plain", "1"),
    "SVAMP_ChatGPT_level3_ranked.json": ("plain", "3"),
    "SVAMP_ChatGPT_level5_ranked.json": ("plain", "5"),
    "0_SVAMP_chatgpt_level3BSM.json": ("subq", "3"),
    "0_SVAMP_chatgpt_level3RaR.json": ("rar", "3"),
    "0_SVAMP_chatgpt_level3SYM.json": ("symbolic", "3"),
}


class RealSettings(BaseModel):
    """The real student's run. Defaults: one seed of each method, 31 min on 2 CPU cores
    (docs/real_student.md: what each choice costs); on a GPU, more questions per batch, epochs and seeds."""

    data: Path = Field(SHARED_DATA, description="the papers' data folder (mcckd/, cot-factors/, gsm8k/)")
    student: str = Field("SmolLM2-135M-Instruct", description="the student's base model source (mcckd.models)")
    train_questions: int | None = Field(None, ge=1, description="only the first N recorded questions; None = 700")
    k: int = Field(2, ge=1, description="diverse correct rationales kept per question")
    epochs: int = 1
    questions_per_batch: int = 4
    learning_rate: float = 5e-5
    alpha: float = Field(0.05, description="MCC-KD's consistency weight")
    max_length: int = 512
    precision: Literal["fp32", "bf16"] = Field(
        "bf16", description="bf16 autocast; fp32 on an AVX2-only CPU (bf16 is emulated there)"
    )
    seeds: list[int] = Field([0], min_length=1, description="training seeds of each method")
    gsm8k: str = Field(
        "mcckd/GSM8K/dev.json",
        description="the GSM8K test file under data: the MCC-KD split (660, all GSM8K test questions) "
        "or gsm8k/test.jsonl (all 1,319: about 10 min a model here)",
    )
    eval_max_tokens: int = Field(256, ge=1, description="longest answer generated at evaluation")
    eval_questions: int | None = Field(None, ge=1, description="only the first N questions of each test set")


def data_files(data: Path, *names: str) -> list[Path]:
    """The files ``names`` under the data folder; one error listing every one that is missing."""
    paths = [data / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"not found: {', '.join(missing)} (RealSettings.data is {data}: the papers' data folder, "
            "../shared/data beside the checkout or $MCCKD_SHARED_DATA)"
        )
    return paths


def student_loop(settings: RealSettings, alpha: float, questions_per_batch: int | None = None) -> TrainConfig:
    """The training loop every real run shares: bf16, packed rows (no padding), full fine-tuning."""
    return TrainConfig(
        alpha=alpha,
        epochs=settings.epochs,
        questions_per_batch=questions_per_batch or settings.questions_per_batch,
        learning_rate=settings.learning_rate,
        max_length=settings.max_length,
        precision=settings.precision,
        # Rows of 512 kept apart by a mask: the recorded figures (README, docs/real_student.md) were trained
        # so. The default, "varlen", is about 1.1x faster here (docs/training_at_scale.md) and retrains.
        packing=True,
        checkpoint_every=20,
    )


def student_eval(settings: RealSettings) -> StudentEval:
    """Greedy decoding; 1 GiB of KV cache holds every sequence a 135M model decodes at once here."""
    return StudentEval(
        max_tokens=settings.eval_max_tokens,
        max_questions=settings.eval_questions,
        vllm=VllmSettings(kv_cache_gib=1.0),
    )


def real_config(settings: RealSettings, store: Path, report_dir: Path) -> DistillConfig:
    """MCC-KD against Std-CoT on the authors' recorded SVAMP rationales."""
    base = TrainSettings(base_model=settings.student)
    methods = {
        "std_cot": StudentMethod(
            train=base.model_copy(update={"loop": student_loop(settings, 0.0)}), seeds=settings.seeds
        ),
        "mcc_kd": StudentMethod(
            train=base.model_copy(update={"loop": student_loop(settings, settings.alpha)}), seeds=settings.seeds
        ),
    }
    recorded, svamp_dev, asdiv, gsm8k = data_files(
        settings.data, "mcckd/SVAMP/train.json", "mcckd/SVAMP/dev.json", "mcckd/ASDiv/dev.json", settings.gsm8k
    )
    return DistillConfig(
        store=store,
        report_dir=report_dir,
        recorded=recorded,
        recorded_as=ImportSettings(
            teacher_name="mcckd-api-teacher", cot_format="plain", max_questions=settings.train_questions
        ),
        test_sets={"svamp_dev": svamp_dev, "asdiv": asdiv, "gsm8k": gsm8k},
        select=SelectSettings(k=settings.k),
        students=methods,
        student_eval=student_eval(settings),
    )


@task(name="svamp-labels")
def svamp_labels(data: Path, store: Path) -> Path:
    """SVAMP's gold answers (train and dev) as one file: the cot-factors files carry none, and a
    cell's dev questions must keep theirs to be counted as overlaps rather than as unlabelled."""
    sources = data_files(data, "mcckd/SVAMP/train.json", "mcckd/SVAMP/dev.json")
    fp = fingerprint("svamp-labels", *(path_fingerprint(s) for s in sources))[:16]
    out = store / "svamp_labels" / fp
    if not is_complete(out):
        rows = [{"question": q["question"], "answer": q["answer"]} for s in sources for q in read_questions(s)]
        manifest = {"stage": "svamp-labels", "inputs": [str(s) for s in sources], "summary": {"rows": len(rows)}}
        with atomic_stage_dir(out, manifest) as tmp:
            (tmp / "labels.json").write_text(json.dumps(rows))
    return out / "labels.json"


def sweep_config(settings: RealSettings, store: Path, report_dir: Path):
    """The six recorded cot-factors cells, each distilled into the student with Std-CoT (one
    rationale a question: the files hold one), evaluated on SVAMP dev and ASDiv."""
    from flows.sweep import RecordedCell, SweepConfig

    files = data_files(settings.data, *(f"cot-factors/{name}" for name in COT_FACTOR_CELLS))
    svamp_dev, asdiv = data_files(settings.data, "mcckd/SVAMP/dev.json", "mcckd/ASDiv/dev.json")
    labels = svamp_labels(settings.data, store)
    cells = [
        RecordedCell(file=file, teacher="chatgpt", cot_format=fmt, granularity=level, labels=labels)
        for file, (fmt, level) in zip(files, COT_FACTOR_CELLS.values(), strict=True)
    ]
    base = TrainSettings(base_model=settings.student)
    # One rationale a question: twice the questions a batch keeps a step's tokens near the MCC-KD run's.
    loop = student_loop(settings, 0.0, questions_per_batch=2 * settings.questions_per_batch)
    return SweepConfig(
        store=store,
        report_dir=report_dir,
        test_sets={"svamp_dev": svamp_dev, "asdiv": asdiv},
        recorded=cells,
        select=SelectSettings(k=1),
        methods={"std_cot": StudentMethod(train=base.model_copy(update={"loop": loop}), seeds=settings.seeds)},
        student_eval=student_eval(settings),
    )


class SelfDistillSettings(BaseModel):
    """Rejection sampling from a real model through vLLM: the student writes rationales for SVAMP
    training questions through its chat template, the judge keeps the correct ones, and it trains
    on them."""

    questions: int = Field(100, ge=1, description="SVAMP training questions sampled")
    num_samples: int = Field(4, ge=1, description="rationales sampled per question")
    temperature: float = 0.8
    max_tokens: int = 256
    k: int = 2
    epochs: int = 2  # a few hundred rationales at most: two passes


def self_distill_config(
    settings: RealSettings, self_settings: SelfDistillSettings, store: Path, report_dir: Path
) -> DistillConfig:
    """The student as its own teacher (one seed: the point is the sampling path and its yield)."""
    teacher = TeacherSpec(name="self", model=settings.student, chat=True, vllm=VllmSettings(kv_cache_gib=1.0))
    train, svamp_dev = data_files(settings.data, "mcckd/SVAMP/train.json", "mcckd/SVAMP/dev.json")
    loop = student_loop(settings.model_copy(update={"epochs": self_settings.epochs}), 0.0)
    return DistillConfig(
        store=store,
        report_dir=report_dir,
        train_questions=train,
        sample=SampleSettings(
            teachers=[teacher],
            prompts=[PromptSpec(template="zero_shot_cot", cot_format="plain", granularity="any")],
            num_samples=self_settings.num_samples,
            sampling=Sampling(temperature=self_settings.temperature, max_tokens=self_settings.max_tokens),
            max_questions=self_settings.questions,
        ),
        select=SelectSettings(k=self_settings.k),
        students={
            "std_cot": StudentMethod(
                train=TrainSettings(base_model=settings.student, loop=loop), seeds=settings.seeds[:1]
            )
        },
        test_sets={"svamp_dev": svamp_dev},
        teacher_eval_template="zero_shot_cot",
        student_eval=student_eval(settings),
    )


STORE = PROJECT_ROOT / "runs" / "store"


@flow(name="real", log_prints=True)
def real(
    settings: RealSettings = RealSettings(),  # noqa: B008  (pydantic default the Prefect UI can show)
    store: Path = STORE,
    report_dir: Path = PROJECT_ROOT / "runs" / "real",
) -> dict:
    """MCC-KD and Std-CoT on SmolLM2-135M-Instruct from the authors' recorded SVAMP rationales."""
    return distill(real_config(settings, store, report_dir))


@flow(name="real-sweep", log_prints=True)
def real_sweep(
    settings: RealSettings = RealSettings(),  # noqa: B008
    store: Path = STORE,
    report_dir: Path = PROJECT_ROOT / "runs" / "real_sweep",
) -> dict:
    """The CoT-factor sweep (arXiv 2502.18001) on the real student: six recorded cells."""
    from flows.sweep import cot_sweep

    return cot_sweep(sweep_config(settings, store, report_dir))


@flow(name="real-self-distill", log_prints=True)
def real_self_distill(
    settings: RealSettings = RealSettings(),  # noqa: B008
    self_settings: SelfDistillSettings = SelfDistillSettings(),  # noqa: B008
    store: Path = STORE,
    report_dir: Path = PROJECT_ROOT / "runs" / "real_self",
) -> dict:
    """The student as its own teacher, sampled through vLLM and filtered by the judge."""
    return distill(self_distill_config(settings, self_settings, store, report_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sweep", action="store_true", help="the CoT-factor sweep over the six recorded cells")
    which.add_argument("--self-distill", action="store_true", help="the student samples its own rationales")
    parser.add_argument("--settings", default="{}", help="RealSettings fields as JSON, e.g. '{\"seeds\": [0, 1]}'")
    parser.add_argument("--report-dir", type=Path, help="default: runs/real, runs/real_sweep or runs/real_self")
    args = parser.parse_args()
    settings = RealSettings.model_validate_json(args.settings)
    where = {"report_dir": args.report_dir} if args.report_dir else {}
    started = time.perf_counter()
    if args.sweep:
        real_sweep(settings=settings, **where)
        print(f"\nflow time: {time.perf_counter() - started:.0f} s")
        return
    flow_fn = real_self_distill if args.self_distill else real
    metrics = flow_fn(settings=settings, **where)
    print(report.console_summary(metrics))
    print(f"\nflow time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
