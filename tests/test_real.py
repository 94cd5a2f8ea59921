"""The real-student flows (``flows/real.py``) on the papers' files: their configurations read what
they name, and a small run of the MCC-KD experiment goes through every stage on the real SmolLM2
student, vLLM and Prefect (the full runs are ``make real``, ``make real-sweep`` and ``make
real-self``: an hour and more, commands rather than tests)."""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest

from flows.real import (
    COT_FACTOR_CELLS,
    RealSettings,
    SelfDistillSettings,
    real,
    real_config,
    self_distill_config,
    svamp_labels,
    sweep_config,
)
from mcckd.readers import question_key, read_labels, read_questions
from mcckd.stages import output
from mcckd.store import read_manifest
from tests.shared_data import SHARED_DATA, needs_shared

pytestmark = needs_shared


@pytest.mark.slow  # sweep_config runs the svamp_labels task: Prefect's ephemeral server
def test_the_configurations_name_existing_files_and_every_cell_has_its_gold_answers(tmp_path):
    settings = RealSettings()
    config = real_config(settings, tmp_path / "store", tmp_path / "report")
    assert set(config.test_sets) == {"svamp_dev", "asdiv", "gsm8k"}
    assert config.recorded.is_file() and all(p.is_file() for p in config.test_sets.values())
    assert {m.train.loop.uses_consistency for m in config.students.values()} == {False, True}
    assert config.baseline_method == "std_cot"

    sweep = sweep_config(settings, tmp_path / "store", tmp_path / "sweep")
    assert [(c.cot_format, c.granularity) for c in sweep.recorded] == list(COT_FACTOR_CELLS.values())
    assert all(c.file.is_file() for c in sweep.recorded)
    labels = read_labels(sweep.recorded[0].labels)
    dev = read_questions(SHARED_DATA / "mcckd" / "SVAMP" / "dev.json")
    assert all(labels[question_key(q["question"])] == q["answer"] for q in dev)  # dev overlaps count as such
    assert svamp_labels.fn(settings.data, tmp_path / "store") == sweep.recorded[0].labels  # stored once

    self_run = self_distill_config(settings, SelfDistillSettings(), tmp_path / "store", tmp_path / "self")
    [teacher] = self_run.teachers
    assert teacher.chat and teacher.model == settings.student and self_run.sample.max_questions == 100


def test_a_data_folder_without_the_papers_files_is_named_with_every_missing_file(tmp_path):
    settings = RealSettings(data=tmp_path)
    first, last = (re.escape(str(tmp_path / name)) for name in ("mcckd/SVAMP/train.json", "mcckd/GSM8K/dev.json"))
    with pytest.raises(FileNotFoundError, match=f"{first}.*{last}"):
        real_config(settings, tmp_path / "store", tmp_path / "report")
    with pytest.raises(FileNotFoundError, match=re.escape("cot-factors/SVAMP_ChatGPT_level1_ranked.json")):
        sweep_config(settings, tmp_path / "store", tmp_path / "sweep")


@pytest.mark.slow
def test_a_small_real_run_evaluates_every_model_on_every_test_set(prefect_harness, tmp_path):
    """Four recorded questions, three test questions per set: import -> judge -> select ->
    decontaminate -> materialize -> train SmolLM2 (Std-CoT, MCC-KD) -> evaluate, under Prefect."""
    settings = RealSettings(
        recorded={"max_questions": 4},
        loop={"precision": "fp32"},  # bf16 is emulated on an AVX2-only CPU: one step took 161 s there
        evaluation={"max_questions": 3, "max_tokens": 24},
        authors_split=[],  # its rows are the same flow on another decontamination (tests/test_plan.py plans them)
    )
    metrics = real(settings=settings, store=tmp_path / "store", report_dir=tmp_path / "report")
    assert {"untrained", "std_cot", "mcc_kd"} <= set(metrics)
    for model in ("untrained", "std_cot", "mcc_kd"):
        assert set(metrics[model]) == {"svamp_dev", "asdiv", "gsm8k"}
    counts = metrics["counts"]
    assert counts["questions"] == 4 and counts["samples"] == 40  # ten recorded rationales a question
    assert counts["trained_on"] + counts["contaminated"] == counts["selected"]
    assert "generated_tokens" not in counts  # imported, not sampled: no yield to report
    assert set(metrics["paired"]) == {"mcc_kd - std_cot", "std_cot - untrained", "mcc_kd - untrained"}
    assert (tmp_path / "report" / "report.md").is_file()
    trained = {
        read_manifest(d)["settings"]["loop"]["alpha"]: d
        for d in (tmp_path / "store" / "train").iterdir()
        if d.is_dir()  # beside each folder lies its stage log
    }
    assert set(trained) == {0.0, settings.loop.alpha}
    log = output("train", trained[settings.loop.alpha], "train_log")
    consistency = pq.read_table(log, columns=["consistency"]).column(0)
    assert max(consistency.to_pylist()) > 0  # MCC-KD's term ran on the real student's answer spans
