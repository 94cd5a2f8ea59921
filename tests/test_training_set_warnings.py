"""A training set too small to mean anything is said so before any training (and in the report), and
the shipped examples are real distillations: the recorded one is ``make real``'s run, stage for stage."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from data_schemas import SAMPLES, SELECTED, write_table
from mcckd import report
from mcckd.paths import PROJECT_ROOT
from mcckd.stages import STAGES, execute
from mcckd.stages.decontaminate import DecontaminateSettings
from mcckd.stages.judge import JudgeSettings
from mcckd.stages.materialize import MaterializeSettings
from mcckd.stages.select import SelectSettings
from mcckd.store import atomic_stage_dir, path_fingerprint
from tests.shared_data import needs_shared
from tests.test_curation_stages import sample_row

SMALL = (
    "the training set has {n} rationale{s} of {q} question{qs}, fewer than min_rationales={m}: the students' "
    "figures will not mean much; give the teachers more questions or samples per question, a stronger teacher, "
    "or rationales you already have (recorded), and see the judge, select and decontaminate lines for where "
    "rationales were lost"
)
SINGLE = (
    "{names}: no question in the training set has two rationales, so MCC-KD's consistency term is zero and "
    "{they} as Std-CoT; keep two or more correct rationales a question (select k >= 2, enough samples per question)"
)


def small(n: int, q: int, m: int = 50) -> str:
    return SMALL.format(n=n, s="" if n == 1 else "s", q=q, qs="" if q == 1 else "s", m=m)


def selected_row(qid: str, rank: int) -> dict:
    return sample_row(qid, rank, f"{rank} + 8 - {rank} = 8. The answer is 8.") | {
        "predicted_answer": "8",
        "verdict": "correct",
        "selection_rank": rank,
        "max_similarity": 0.0,
    }


def materialized(out: Path, per_question: list[int]) -> Path:
    """The real materialize stage's folder for questions with these numbers of selected rationales."""
    rows = [selected_row(f"q{q}", rank) for q, n in enumerate(per_question) for rank in range(n)]
    selected = out.parent / f"{out.name}-selected_in.parquet"
    write_table(pa.Table.from_pylist(rows, schema=SELECTED), selected, SELECTED)
    execute("materialize", MaterializeSettings(), out, {"selected": selected})
    return out


@pytest.mark.parametrize(
    ("per_question", "expected"),
    [
        pytest.param([], [small(0, 0), SINGLE.format(names="mcc_kd", they="it trains")], id="no-rows"),
        pytest.param([1] * 49, [small(49, 49), SINGLE.format(names="mcc_kd", they="it trains")], id="49-one-each"),
        pytest.param([1] * 50, [SINGLE.format(names="mcc_kd", they="it trains")], id="50-one-each"),
        pytest.param([2] * 24 + [1], [small(49, 25)], id="49-two-each"),
        pytest.param([2] * 25, [], id="50-two-each"),
        pytest.param([1] * 49 + [2] * 1, [], id="51-one-question-with-two"),
    ],
)
def test_warnings_follow_the_training_sets_counts(tmp_path, per_question, expected):
    folder = materialized(tmp_path / "materialize", per_question)
    summary = report.stage_summary(folder)
    assert (summary["questions"], summary["rationales"]) == (len(per_question), sum(per_question))
    assert report.training_set_warnings(folder, ["mcc_kd"], min_rationales=50) == expected
    # Std-CoT alone needs no pairs; with no threshold nothing is too small.
    assert report.training_set_warnings(folder, [], min_rationales=0) == []


def test_warnings_name_every_consistency_method_and_count_in_the_singular(tmp_path):
    folder = materialized(tmp_path / "materialize", [1])
    assert report.training_set_warnings(folder, ["mcc_kd", "mcc_kd_strong"], min_rationales=2) == [
        small(1, 1, m=2),
        SINGLE.format(names="mcc_kd, mcc_kd_strong", they="they train"),
    ]
    assert small(1, 1, m=2).startswith("the training set has 1 rationale of 1 question, fewer than min_rationales=2")


# --- the report opens with its warnings ----------------------------------------------------------------------


def fake_stage(stage: str, out: Path, summary: dict, outputs: dict[str, list[dict]]) -> Path:
    """A stage folder as the report reads it, without running the stage (train and evaluate need models):
    the given rows of its Parquet outputs, each where and as the stage declares it."""
    with atomic_stage_dir(out, {"stage": stage, "summary": summary}) as tmp:
        for name, rows in outputs.items():
            STAGES[stage].write(tmp, name, rows)
    return out


def evaluated(out: Path, model: str, correct: list[bool]) -> Path:
    rows = [
        {
            "model": model,
            "split": "svamp_dev",
            "question_id": f"t{i}",
            "question": f"test {i}",
            "answer": "8",
            "generation": "The answer is 8." if ok else "8?",
            "generations": ["The answer is 8." if ok else "8?"],
            "predicted_answer": "8" if ok else None,
            "votes": 1,
            "answered": ok,
            "correct": ok,
            "finish_reason": "stop",
        }
        for i, ok in enumerate(correct)
    ]
    summary = {"accuracy": {"svamp_dev": sum(correct) / len(correct)}, "samples": 1}
    return fake_stage("evaluate", out, summary, {"predictions": rows})


def trained(out: Path) -> Path:
    log = [
        {"step": s, "epoch": 0, "loss": 2 / s, "cross_entropy": 2 / s, "consistency": 0.0, "lr": 1e-5, "seconds": s}
        for s in (1, 2, 3)
    ]
    summary = {"steps": 3, "final_cross_entropy": 0.667, "seconds": 3.0}
    return fake_stage("train", out, summary, {"train_log": log, "rejections": []})


def test_the_report_opens_with_its_warnings(tmp_path):
    samples = write_table([sample_row("a", 0, "5 + 3 = 8. The answer is 8.")], tmp_path / "s.parquet", SAMPLES)
    judged, selected, clean, trainset = (tmp_path / name for name in ("judge", "select", "dec", "mat"))
    execute("judge", JudgeSettings(), judged, {"samples": samples})
    execute("select", SelectSettings(k=2), selected, {"judged": judged})
    execute("decontaminate", DecontaminateSettings(), clean, {"selected": selected})
    execute("materialize", MaterializeSettings(), trainset, {"selected": clean})
    warnings = report.training_set_warnings(trainset, ["mcc_kd"], min_rationales=50)
    assert warnings == [small(1, 1), SINGLE.format(names="mcc_kd", they="it trains")]

    train_dirs = {name: {0: trained(tmp_path / "train" / name)} for name in ("std_cot", "mcc_kd")}
    evals = {
        report.UNTRAINED: {None: evaluated(tmp_path / "eval" / "base", "untrained", [False, False, True])},
        "std_cot": {0: evaluated(tmp_path / "eval" / "std", "std_cot-seed0", [True, False, True])},
        "mcc_kd": {0: evaluated(tmp_path / "eval" / "mcc", "mcc_kd-seed0", [True, False, False])},
    }
    counts = {"questions": 1, "samples": 1, "correct": 1, "selected": 1, "contaminated": 0, "trained_on": 1}
    metrics = report.build_metrics(evals, counts, baseline="std_cot")
    stage_dirs = {"judge": judged, "select": selected, "decontaminate": clean, "materialize": trainset}

    warned = report.write_report(tmp_path / "warned", metrics, stage_dirs, train_dirs, evals, warnings=warnings)
    text = warned.read_text()
    assert text.startswith("# Distillation report\n\n## Warnings\n\n" + "".join(f"- {w}\n" for w in warnings))
    assert text.index("## Warnings") < text.index("## Accuracy")

    plain = report.write_report(tmp_path / "plain", metrics, stage_dirs, train_dirs, evals).read_text()
    assert "## Warnings" not in plain and plain.startswith("# Distillation report\n\n## Accuracy")
    assert plain.split("## Accuracy", 1)[1] == text.split("## Accuracy", 1)[1]  # nothing else moves


# --- the shipped examples ------------------------------------------------------------------------------------

EXAMPLES = PROJECT_ROOT / "examples"
# The examples name the papers' data as a user runs them from the repository root: ../shared/data.
EXAMPLE_DATA = PROJECT_ROOT.parent / "shared" / "data"
needs_example_data = pytest.mark.skipif(
    not (EXAMPLE_DATA / "mcckd").is_dir(), reason=f"the examples' data folder {EXAMPLE_DATA} is absent"
)


def example(name: str):
    """The example as flows.distill reads it; every key in the file is a field it uses (none ignored)."""
    from flows.config import DistillConfig

    text = (EXAMPLES / name).read_text()
    config = DistillConfig.model_validate_json(text)
    assert config.model_dump(mode="json", exclude_unset=True) == json.loads(text)
    return config


def stage_settings(config, exclude: set[str] = frozenset()) -> dict:
    """Everything of a run that its stages' fingerprints depend on: the settings, and the files by content."""
    dump = config.model_dump(exclude={"store", "report_dir", *exclude})
    for field in ("recorded", "train_questions"):
        if dump.get(field) is not None:
            dump[field] = path_fingerprint(getattr(config, field))
    dump["test_sets"] = {name: path_fingerprint(p) for name, p in config.test_sets.items()}
    return dump


def planned_fingerprints(config) -> dict[str, str]:
    """Every stage's fingerprint as the distill flow runs them (its plan), computed without running one."""
    from flows.plan import plan

    return {call.label: call.fingerprint for call in plan(config).calls}


@needs_shared  # real_config reads the papers' data where make real does
@needs_example_data
def test_the_recorded_example_is_make_reals_run_stage_for_stage(tmp_path, monkeypatch):
    from flows.real import STORE, RealSettings, real_config

    monkeypatch.chdir(PROJECT_ROOT)  # where a user runs it: its paths are ../shared/data/...
    config = example("smollm2_svamp.json")
    real = real_config(RealSettings(), STORE, tmp_path / "report")  # make real's settings
    assert config.store == STORE and config.report_dir == Path("runs/smollm2_svamp")
    assert stage_settings(config) == stage_settings(real)
    assert planned_fingerprints(config) == planned_fingerprints(real)
    assert config.baseline_method == "std_cot" and config.students["mcc_kd"].train.loop.alpha == 0.05


@needs_example_data
def test_the_sampled_example_differs_from_the_recorded_one_only_in_where_rationales_come_from(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    recorded, sampled = example("smollm2_svamp.json"), example("smollm2_svamp_sampled.json")
    [teacher] = sampled.teachers
    assert teacher.backend == "http" and teacher.base_url and teacher.chat
    assert sampled.train_questions.is_file() and sampled.recorded is None
    source = {"recorded", "recorded_as", "sample", "train_questions", "teacher_eval_template", "report_dir"}
    assert stage_settings(sampled, source) == stage_settings(recorded, source)
