"""The real-student flows (``flows/real.py``) on the papers' files: their configurations read what
they name, and a small run of the MCC-KD experiment goes through every stage on the real SmolLM2
student, vLLM and Prefect (the full runs are ``make real``, ``make real-sweep`` and ``make
real-self``: an hour and more, commands rather than tests)."""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

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
from mcckd.models import resolve_model
from mcckd.readers import question_key, read_labels, read_questions
from mcckd.rendering import Renderer
from mcckd.stages import output
from mcckd.store import read_manifest
from tests.shared_data import SHARED_DATA, needs_shared

pytestmark = needs_shared


@pytest.mark.slow  # sweep_config runs the svamp_labels task: on the session's Prefect server (not an ephemeral one)
def test_the_configurations_name_existing_files_and_every_cell_has_its_gold_answers(prefect_harness, tmp_path):
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
    """Two recorded questions (one shares an 8-gram with SVAMP dev), one test question per set:
    import -> judge -> select -> decontaminate -> materialize -> train SmolLM2 (Std-CoT, MCC-KD: one
    step each) -> evaluate (three vLLM engines), under Prefect. Also the real student's chat template
    end to end (tests/test_model_sources.py checks its rendering on fixed rows without a run): the
    students learn only the reply and its <|im_end|>, and vLLM is given the prompt tokens they read."""
    settings = RealSettings(
        recorded={"max_questions": 2},
        # bf16 is emulated on an AVX2-only CPU (one step took 161 s there); no warm-up, so the one step moves
        # the weights (a linear warm-up's first step has learning rate 0).
        loop={"precision": "fp32", "warmup_ratio": 0.0},
        evaluation={"max_questions": 1, "max_tokens": 8},
        authors_split=[],  # its rows are the same flow on another decontamination (tests/test_plan.py plans them)
    )
    metrics = real(settings=settings, store=tmp_path / "store", report_dir=tmp_path / "report")
    assert {"untrained", "std_cot", "mcc_kd"} <= set(metrics)
    for model in ("untrained", "std_cot", "mcc_kd"):
        assert set(metrics[model]) == {"svamp_dev", "asdiv", "gsm8k"}
    counts = metrics["counts"]
    assert counts["questions"] == 2 and counts["samples"] == 20  # ten recorded rationales a question
    assert counts["trained_on"] + counts["contaminated"] == counts["selected"]
    assert counts["trained_on"] == counts["contaminated"] == 2  # the first question overlaps SVAMP dev
    assert "generated_tokens" not in counts  # imported, not sampled: no yield to report
    assert set(metrics["paired"]) == {"mcc_kd - std_cot", "std_cot - untrained", "mcc_kd - untrained"}
    assert (tmp_path / "report" / "report.md").is_file()
    store = tmp_path / "store"
    trained = {
        read_manifest(d)["settings"]["loop"]["alpha"]: d
        for d in (store / "train").iterdir()
        if d.is_dir()  # beside each folder lies its stage log
    }
    assert set(trained) == {0.0, settings.loop.alpha}
    log = output("train", trained[settings.loop.alpha], "train_log")
    consistency = pq.read_table(log, columns=["consistency"]).column(0)
    assert max(consistency.to_pylist()) > 0  # MCC-KD's term ran on the real student's answer spans
    summaries = {alpha: read_manifest(d)["summary"] for alpha, d in trained.items()}
    for summary in summaries.values():
        assert summary["chat_template"] and summary["rejected"] == 0 and summary["steps"] == 1
    assert summaries[0.0]["weight_hashes"] != summaries[settings.loop.alpha]["weight_hashes"]  # the term moved it

    # Each student read its chat turn and learnt only the reply and its end of turn ([[...]]).
    [row] = pq.read_table(output("materialize", only_dir(store / "materialize"), "trainset")).to_pylist()
    shown = output("train", trained[settings.loop.alpha], "rendered_examples").read_text()
    prompt, learnt = shown.split("[[", 1)
    assert prompt.startswith("<|im_start|>system\n") and "<|im_start|>user\n" + row["question"] in prompt
    assert prompt.endswith("Let's think step by step.<|im_end|>\n<|im_start|>assistant\n")
    assert learnt.startswith(row["rationales"][0][:40]) and "{{" + row["answer"] + "}}" in learnt
    assert learnt.split("=====")[0].rstrip().endswith("<|im_end|>]]")

    # vLLM was given those prompt tokens: the evaluated student's own tokenizer renders them, as the base's.
    base = Renderer(AutoTokenizer.from_pretrained(str(resolve_model(settings.student))))
    student = Renderer(AutoTokenizer.from_pretrained(str(output("train", trained[0.0], "model"))))
    ids = student.prompt_ids(row["question"])
    assert ids == base.prompt_ids(row["question"]) and student.tokenizer.decode(ids) == prompt
    assert student.stop_token_ids == [student.tokenizer.convert_tokens_to_ids("<|im_end|>")]

    evaluated = {read_manifest(d)["settings"]["model_name"]: d for d in (store / "evaluate").iterdir() if d.is_dir()}
    assert set(evaluated) == {"untrained", "std_cot-seed0", "mcc_kd-seed0"}
    for d in evaluated.values():
        assert read_manifest(d)["summary"]["chat_template"]
        predictions = pq.read_table(output("evaluate", d, "predictions")).to_pylist()
        assert sorted(p["split"] for p in predictions) == ["asdiv", "gsm8k", "svamp_dev"]
        assert all(p["generation"] and "<|im_" not in p["generation"] for p in predictions)  # it answered


def only_dir(parent):
    [folder] = [d for d in parent.iterdir() if d.is_dir()]
    return folder
