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

from prefect import flow, task
from pydantic import Field, ValidationError, field_validator

from data_schemas import exit_invalid
from flows.config import DistillConfig, Overrides, StudentEval, StudentMethod, partial, std_cot_and_mcc_kd
from flows.distill import distill
from flows.sweep import RecordedCell, SweepConfig, cot_sweep
from mcckd import report, sweep
from mcckd.generation import VllmSettings
from mcckd.paths import PROJECT_ROOT, SHARED_DATA
from mcckd.readers import read_questions
from mcckd.stages.decontaminate import DecontaminateSettings
from mcckd.stages.holdout import HoldoutSettings
from mcckd.stages.import_recorded import ImportSettings
from mcckd.stages.sample import PromptSpec, SampleSettings
from mcckd.stages.select import SelectSettings
from mcckd.stages.train import TrainSettings
from mcckd.store import atomic_stage_dir, fingerprint, is_complete, path_fingerprint
from mcckd.teachers import Sampling, TeacherSpec
from mcckd.training.config import TrainConfig

# Every cot-factors file (arXiv 2502.18001's SVAMP grid) -> (teacher, CoT format, granularity):
# ChatGPT plain 1-6 and sub-question (BSM), rephrase-and-respond (RaR), symbolic (SYM) at 3 and 5;
# Gemini plain 1-6; LLaMA plain 1-4; human-written equations.
COT_FACTOR_FILES = {
    **{f"SVAMP_ChatGPT_level{n}_ranked.json": ("chatgpt", "plain", str(n)) for n in range(1, 7)},
    **{
        f"0_SVAMP_chatgpt_level{n}{code}.json": ("chatgpt", fmt, str(n))
        for n in (3, 5)
        for code, fmt in (("BSM", "subq"), ("RaR", "rar"), ("SYM", "symbolic"))
    },
    **{f"SVAMP_gemini_level{n}_ranked.json": ("gemini", "plain", str(n)) for n in range(1, 7)},
    **{f"SVAMP_llama_level{n}_ranked.json": ("llama", "plain", str(n)) for n in range(1, 5)},
    "svamp_human_annotation.json": ("human", "equation", "1"),
}
# The MCC-KD authors' recorded rationales (ten a question, gold answers included) as a sweep cell:
# what alpha and K are searched on (``"axes": {"select.k": [2, 4], "train.loop.alpha": [...]}``).
MCCKD_CELL = "mcckd"
MCCKD_RECORDED = "mcckd/SVAMP/train.json"
# The cells make real-sweep distils by default: plain levels 1/3/5; sub-question, rephrase-and-respond
# and symbolic at level 3 (file -> (CoT format, granularity)).
COT_FACTOR_CELLS = {
    "SVAMP_ChatGPT_level1_ranked.json": ("plain", "1"),
    "SVAMP_ChatGPT_level3_ranked.json": ("plain", "3"),
    "SVAMP_ChatGPT_level5_ranked.json": ("plain", "5"),
    "0_SVAMP_chatgpt_level3BSM.json": ("subq", "3"),
    "0_SVAMP_chatgpt_level3RaR.json": ("rar", "3"),
    "0_SVAMP_chatgpt_level3SYM.json": ("symbolic", "3"),
}


RecordedSubset = partial(
    ImportSettings,
    "RecordedSubset",
    "Which of the recorded rationales are imported (the rest of ImportSettings is fixed: the authors' file).",
    max_questions=None,
)
RealEval = partial(
    StudentEval,
    "RealEval",
    "How every model is decoded at evaluation (1 GiB of KV cache holds every sequence a 135M model "
    "decodes at once here).",
    max_tokens=256,
    max_questions=None,
)


class RealSettings(Overrides):
    """The real student's run. Defaults: one seed of each method, 31 min on 2 CPU cores
    (docs/real_student.md: what each choice costs); on a GPU, more questions per batch, epochs and seeds.
    Every stage setting is the stage's own settings model (or a part of it), bounded and described there;
    ``{"loop": {"epochs": 3}}`` changes one field of the default loop."""

    data: Path = Field(SHARED_DATA, description="the papers' data folder (mcckd/, cot-factors/, gsm8k/)")
    student: str = Field("SmolLM2-135M-Instruct", description="the student's base model source (mcckd.models)")
    recorded: RecordedSubset = Field(RecordedSubset(), description="only the first N recorded questions (of 700)")
    select: SelectSettings = Field(SelectSettings(k=2), description="K diverse correct rationales per question")
    loop: TrainConfig = Field(
        TrainConfig(
            alpha=0.05,
            epochs=1,
            questions_per_batch=4,
            learning_rate=5e-5,
            max_length=512,
            precision="bf16",  # fp32 on an AVX2-only CPU (bf16 is emulated there)
            # Rows of 512 kept apart by a mask: the recorded figures (README, docs/real_student.md) were
            # trained so. The default, "varlen", is about 1.1x faster here (docs/training_at_scale.md).
            packing=True,
            checkpoint_every=20,
        ),
        description="the students' loop: MCC-KD with its alpha, Std-CoT the same at alpha 0; full fine-tuning",
    )
    seeds: list[int] = Field([0], min_length=1, description="training seeds of each method")
    validation: HoldoutSettings | None = Field(
        None,
        description="hold out this share of the training questions: each epoch is kept and the best on them "
        "evaluated and exported with a model card (None: the last epoch)",
    )
    gsm8k: str = Field(
        "mcckd/GSM8K/dev.json",
        description="the GSM8K test file under data: the MCC-KD split (660, all GSM8K test questions) "
        "or gsm8k/test.jsonl (all 1,319: about 10 min a model here)",
    )
    evaluation: RealEval = Field(RealEval(), description="longest answer, questions per test set")
    authors_split: list[str] = Field(
        ["mcc_kd"],
        description="methods also trained on the MCC-KD authors' split as published (only exact copies of test "
        "questions removed, no 8-gram decontamination), reported as rows of their own beside the default",
    )
    cells: list[str] = Field(
        list(COT_FACTOR_CELLS),
        min_length=1,
        description="the sweep's cells: cot-factors files (any of flows.real.COT_FACTOR_FILES: the paper's whole "
        "SVAMP grid), or 'mcckd' (the MCC-KD authors' ten rationales a question)",
    )
    axes: dict[str, list] = Field(
        {}, description='the sweep\'s further settings to vary (SweepConfig.axes), e.g. {"train.loop.epochs": [2, 4]}'
    )

    @field_validator("authors_split")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        unknown = sorted(set(methods) - {"std_cot", "mcc_kd"})
        if unknown:
            raise ValueError(f"authors_split: unknown methods {unknown} (std_cot, mcc_kd)")
        return methods

    @field_validator("cells")
    @classmethod
    def _known_cells(cls, cells: list[str]) -> list[str]:
        unknown = [c for c in cells if c not in COT_FACTOR_FILES and c != MCCKD_CELL]
        if unknown:
            raise ValueError(f"unknown cot-factors cells {unknown}; known: {sorted(COT_FACTOR_FILES)}")
        return cells


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


def student_eval(settings: RealSettings) -> StudentEval:
    return StudentEval(vllm=VllmSettings(kv_cache_gib=1.0), **settings.evaluation.model_dump())


def real_config(settings: RealSettings, store: Path, report_dir: Path) -> DistillConfig:
    """MCC-KD against Std-CoT on the authors' recorded SVAMP rationales."""
    methods = std_cot_and_mcc_kd(TrainSettings(base_model=settings.student, loop=settings.loop), settings.seeds)
    recorded, svamp_dev, asdiv, gsm8k = data_files(
        settings.data, "mcckd/SVAMP/train.json", "mcckd/SVAMP/dev.json", "mcckd/ASDiv/dev.json", settings.gsm8k
    )
    return DistillConfig(
        store=store,
        report_dir=report_dir,
        recorded=recorded,
        recorded_as=ImportSettings(
            teacher_name="mcckd-api-teacher", cot_format="plain", **settings.recorded.model_dump()
        ),
        test_sets={"svamp_dev": svamp_dev, "asdiv": asdiv, "gsm8k": gsm8k},
        select=settings.select,
        validation=settings.validation,
        students=methods,
        student_eval=student_eval(settings),
    )


AUTHORS_SPLIT = "authors_split"  # its metrics' key in the main run's (mcckd.plots.NOT_MODELS)


def authors_split_config(settings: RealSettings, store: Path, report_dir: Path) -> DistillConfig | None:
    """The same distillation on the MCC-KD authors' train/dev split as published: word 8-gram
    decontamination removes 47% of the selected SVAMP rationales (SVAMP writes several questions on
    one story body), so this row is the one to compare with the paper's figures."""
    if not settings.authors_split:
        return None
    config = real_config(settings, store, report_dir / "authors_split")
    return config.model_copy(
        update={
            "decontaminate": DecontaminateSettings(ngram=None),
            "students": {name: config.students[name] for name in settings.authors_split},
        }
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


def recorded_cell(name: str, file: Path, labels: Path) -> RecordedCell:
    """A sweep cell of ``RealSettings.cells``: the MCC-KD authors' file (labelled), or a cot-factors file
    (SVAMP's gold answers joined on the question)."""
    if name == MCCKD_CELL:
        return RecordedCell(file=file, teacher="mcckd-api", cot_format="plain", granularity="any")
    teacher, fmt, level = COT_FACTOR_FILES[name]
    return RecordedCell(file=file, teacher=teacher, cot_format=fmt, granularity=level, labels=labels)


def sweep_config(settings: RealSettings, store: Path, report_dir: Path) -> SweepConfig:
    """The recorded cot-factors cells (the six of COT_FACTOR_CELLS by default), each distilled into the
    student with Std-CoT (one rationale a question: the files hold one) under every variant of
    ``axes``, evaluated on SVAMP dev and ASDiv."""
    names = [MCCKD_RECORDED if c == MCCKD_CELL else f"cot-factors/{c}" for c in settings.cells]
    *files, svamp_dev, asdiv = data_files(settings.data, *names, "mcckd/SVAMP/dev.json", "mcckd/ASDiv/dev.json")
    labels = svamp_labels(settings.data, store)
    cells = [recorded_cell(name, file, labels) for name, file in zip(settings.cells, files, strict=True)]
    # One rationale a question: twice the questions a batch keeps a step's tokens near the MCC-KD run's.
    loop = settings.loop.model_copy(update={"alpha": 0.0, "questions_per_batch": 2 * settings.loop.questions_per_batch})
    return SweepConfig(
        store=store,
        report_dir=report_dir,
        test_sets={"svamp_dev": svamp_dev, "asdiv": asdiv},
        recorded=cells,
        select=SelectSettings(k=1),
        validation=settings.validation,
        axes=settings.axes,
        methods={
            "std_cot": StudentMethod(train=TrainSettings(base_model=settings.student, loop=loop), seeds=settings.seeds)
        },
        student_eval=student_eval(settings),
    )


SelfSampling = partial(
    SampleSettings,
    "SelfSampling",
    "How the student samples its own rationales (its teacher and prompt are fixed: itself, zero-shot CoT).",
    max_questions=100,
    num_samples=4,
    sampling=Sampling(temperature=0.8, max_tokens=256),
)
SelfLoop = partial(
    TrainConfig,
    "SelfLoop",
    "What self-distillation changes in the real loop: a few hundred rationales at most, two passes.",
    epochs=2,
)


class SelfDistillSettings(Overrides):
    """Rejection sampling from a real model through vLLM: the student writes rationales for SVAMP
    training questions through its chat template, the judge keeps the correct ones, and it trains
    on them."""

    sample: SelfSampling = Field(SelfSampling(), description="SVAMP training questions, samples, decoding")
    select: SelectSettings = Field(SelectSettings(k=2), description="K diverse correct rationales per question")
    loop: SelfLoop = Field(SelfLoop(), description="what changes in the real loop")


def self_distill_config(
    settings: RealSettings, self_settings: SelfDistillSettings, store: Path, report_dir: Path
) -> DistillConfig:
    """The student as its own teacher (one seed: the point is the sampling path and its yield)."""
    teacher = TeacherSpec(name="self", model=settings.student, chat=True, vllm=VllmSettings(kv_cache_gib=1.0))
    train, svamp_dev = data_files(settings.data, "mcckd/SVAMP/train.json", "mcckd/SVAMP/dev.json")
    loop = settings.loop.model_copy(update={"alpha": 0.0, **self_settings.loop.model_dump()})
    return DistillConfig(
        store=store,
        report_dir=report_dir,
        train_questions=train,
        sample=SampleSettings(
            teachers=[teacher],
            prompts=[PromptSpec(template="zero_shot_cot", cot_format="plain", granularity="any")],
            **self_settings.sample.model_dump(),
        ),
        select=self_settings.select,
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
    """MCC-KD and Std-CoT on SmolLM2-135M-Instruct from the authors' recorded SVAMP rationales, and
    the ``authors_split`` methods again on the authors' split without 8-gram decontamination."""
    metrics = distill(real_config(settings, store, report_dir))
    extra = authors_split_config(settings, store, report_dir)
    if extra is not None:
        metrics[AUTHORS_SPLIT] = distill(extra)
        report.add_section(
            report_dir / "report.md",
            "Rows on the authors' split (no 8-gram decontamination)",
            f"The same runs on the MCC-KD train/dev files as published (only exact copies of a test question "
            f"removed; full report: `{extra.report_dir}/report.md`), to compare with the paper's figures. "
            "The table above is decontaminated: read that one for this student's ability.",
            report.accuracy_table(metrics[AUTHORS_SPLIT]),
        )
        (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


@flow(name="real-sweep", log_prints=True)
def real_sweep(
    settings: RealSettings = RealSettings(),  # noqa: B008
    store: Path = STORE,
    report_dir: Path = PROJECT_ROOT / "runs" / "real_sweep",
) -> dict:
    """The CoT-factor sweep (arXiv 2502.18001) on the real student: six recorded cells."""
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
    try:
        settings = RealSettings.model_validate_json(args.settings)
    except ValidationError as error:
        exit_invalid("flows.real", "--settings", error)
    where = {"report_dir": args.report_dir} if args.report_dir else {}
    started = time.perf_counter()
    if args.sweep:
        print(sweep.console_summary(real_sweep(settings=settings, **where)))
    else:
        flow_fn = real_self_distill if args.self_distill else real
        metrics = flow_fn(settings=settings, **where)
        print(report.console_summary(metrics))
        if AUTHORS_SPLIT in metrics:
            table = report.accuracy_table(metrics[AUTHORS_SPLIT])
            print(f"\nOn the authors' split (no 8-gram decontamination):\n\n{table}")
    print(f"\nflow time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
