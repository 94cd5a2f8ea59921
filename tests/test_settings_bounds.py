"""Every setting that can be wrong has bounds: refused with one line naming the field, from the model,
the stage command line, a flow's config file, and the UI form's schema; and one predicate decides
Std-CoT or MCC-KD (no vLLM, no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import BaseModel, ValidationError

from data_schemas import field_errors
from mcckd.generation import VllmSettings
from mcckd.stages.decontaminate import DecontaminateSettings
from mcckd.stages.evaluate import EvaluateSettings
from mcckd.stages.import_recorded import ImportSettings
from mcckd.stages.judge import JudgeSettings
from mcckd.stages.sample import SampleSettings
from mcckd.stages.select import SelectSettings
from mcckd.stages.train import TrainSettings
from mcckd.teachers import HttpSettings, Sampling, TeacherSpec
from mcckd.training import uses_consistency_term
from mcckd.training.config import LoraSettings, TrainConfig

TEACHER = TeacherSpec(name="t", model="m")
REQUIRED: dict[type[BaseModel], dict] = {
    SampleSettings: {"teachers": [TEACHER]},
    EvaluateSettings: {"model": "m", "model_name": "m"},
    TrainSettings: {"base_model": "m"},
}

# (settings class, field, a refused value, an accepted value at or near the bound)
BOUNDS = [
    (TrainConfig, "alpha", -0.1, 0.0),
    (TrainConfig, "temperature", 0.0, 0.5),
    (TrainConfig, "epochs", 0, 1),
    (TrainConfig, "questions_per_batch", 0, 1),
    (TrainConfig, "gradient_accumulation_steps", 0, 1),
    (TrainConfig, "learning_rate", 0.0, 1e-6),
    (TrainConfig, "weight_decay", -0.1, 0.0),
    (TrainConfig, "warmup_ratio", -0.1, 0.0),
    (TrainConfig, "warmup_ratio", 1.5, 1.0),
    (TrainConfig, "max_length", 0, 1),
    (TrainConfig, "pack_length", -1, 0),
    (TrainConfig, "dev_fraction", -0.1, 0.0),
    (TrainConfig, "dev_fraction", 1.0, 0.5),
    (TrainConfig, "eval_every", -1, 0),
    (TrainConfig, "checkpoint_every", -1, 0),
    (TrainConfig, "seed", -1, 0),
    (LoraSettings, "r", 0, 1),
    (LoraSettings, "alpha", 0, 1),
    (LoraSettings, "dropout", -0.1, 0.0),
    (LoraSettings, "dropout", 1.0, 0.5),
    (SelectSettings, "k", 0, 1),
    (SelectSettings, "ngram", 0, 1),
    (SelectSettings, "num_perm", 0, 1),
    (JudgeSettings, "max_rationale_chars", 0, 1),
    (JudgeSettings, "workers", -1, 0),
    (DecontaminateSettings, "ngram", 0, 1),
    (ImportSettings, "max_questions", 0, 1),
    (SampleSettings, "num_samples", 0, 1),
    (SampleSettings, "shard_size", 0, 1),
    (SampleSettings, "max_questions", 0, 1),
    (SampleSettings, "engines", 0, 1),
    (EvaluateSettings, "max_tokens", 0, 1),
    (EvaluateSettings, "samples", 0, 1),
    (EvaluateSettings, "temperature", 0.0, 0.1),
    (EvaluateSettings, "max_questions", 0, 1),
    (EvaluateSettings, "seed", -1, 0),
    (TrainSettings, "processes", 0, 1),
    (VllmSettings, "max_model_len", 0, 1),
    (VllmSettings, "tensor_parallel_size", 0, 1),
    (VllmSettings, "memory_fraction", 0.0, 0.01),
    (VllmSettings, "memory_fraction", 1.5, 1.0),
    (VllmSettings, "kv_cache_gib", 0.0, 0.01),
    (VllmSettings, "max_num_seqs", 0, 1),
    (HttpSettings, "max_in_flight", 0, 1),
    (HttpSettings, "timeout_s", 0.0, 0.1),
    (HttpSettings, "max_retries", -1, 0),
    (HttpSettings, "backoff_base_s", -1.0, 0.0),
    (HttpSettings, "backoff_max_s", -1.0, 0.0),
    (Sampling, "temperature", -0.1, 0.0),  # 0 = greedy teacher sampling
    (Sampling, "top_p", 0.0, 0.01),
    (Sampling, "top_p", 1.1, 1.0),
    (Sampling, "max_tokens", 0, 1),
]


@pytest.mark.parametrize(("model", "field", "bad", "ok"), BOUNDS, ids=lambda x: getattr(x, "__name__", repr(x)))
def test_a_bad_value_is_refused_naming_the_field(model: type[BaseModel], field: str, bad, ok):
    base = REQUIRED.get(model, {})
    with pytest.raises(ValidationError) as caught:
        model(**base, **{field: bad})
    [line] = field_errors(caught.value)
    assert line.startswith(f"field {field!r}: Input should be "), line
    assert getattr(model(**base, **{field: ok}), field) == ok


def test_bounds_keep_every_default_valid_and_the_dump_unchanged():
    """Field constraints change neither a default nor the dump the stage fingerprints hash."""
    for model in {m for m, *_ in BOUNDS}:
        settings = model(**REQUIRED.get(model, {}))
        assert model.model_validate(settings.model_dump()) == settings
    assert TrainConfig().model_dump()["alpha"] == 0.0 and SelectSettings().model_dump()["k"] == 3


def test_a_check_of_the_whole_model_is_reported_without_a_field():
    with pytest.raises(ValidationError) as caught:
        SampleSettings(teachers=[])
    assert field_errors(caught.value) == ["Value error, teachers need distinct names, got []"]


def test_uses_consistency_is_the_one_predicate():
    assert TrainConfig(alpha=0).uses_consistency is False
    assert TrainConfig(alpha=0.1).uses_consistency is True
    assert TrainConfig().uses_consistency is False  # the default is Std-CoT
    assert uses_consistency_term(0.0) is False and uses_consistency_term(1e-9) is True
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        uses_consistency_term(-0.1)  # a bare float that skipped TrainConfig's bound


class TinyLM(torch.nn.Module):
    """A causal-LM stand-in: embeddings as the final hidden states, a linear LM head; records
    whether the step asked for hidden states (the consistency term needs them)."""

    def __init__(self, vocab: int = 13, hidden: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        self.asked_hidden: list[bool] = []

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, use_cache=False, output_hidden_states=False):
        self.asked_hidden.append(output_hidden_states)
        hidden = self.embed(input_ids)
        return SimpleNamespace(logits=self.head(hidden), hidden_states=(hidden,) if output_hidden_states else None)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_the_training_step_follows_the_predicate(alpha: float):
    """The step as the loop calls it (mcckd.training.loop.forward_loss): Std-CoT computes no hidden
    states nor consistency, MCC-KD adds alpha x consistency, as ``cfg.uses_consistency`` says."""
    from mcckd.training.loss import IGNORE_INDEX, question_pairs
    from mcckd.training.step import Encoded, collate, step_losses

    cfg = TrainConfig(alpha=alpha, chunked_loss=False)
    a = Encoded("q", [1, 2, 3, 9], [IGNORE_INDEX, 2, 3, 9], [2], (9,))
    b = Encoded("q", [1, 4, 5, 9], [IGNORE_INDEX, 4, 5, 9], [2], (9,))
    t = collate([[a, b]], pad_id=0)
    model = TinyLM()
    pairs = question_pairs(t["group_ids"], cfg.pair_mode)
    parts = step_losses(model, model.head, t, pairs, cfg.alpha, cfg.temperature, cfg.chunked_loss)
    assert model.asked_hidden == [cfg.uses_consistency]
    if cfg.uses_consistency:
        assert parts.consistency.item() > 0
        assert parts.total.item() == pytest.approx(parts.cross_entropy.item() + alpha * parts.consistency.item())
    else:
        assert parts.consistency.item() == 0 and torch.equal(parts.total, parts.cross_entropy)


def test_the_baseline_method_is_the_one_without_consistency():
    from flows.config import DistillConfig, StudentMethod

    def method(alpha: float) -> StudentMethod:
        return StudentMethod(train=TrainSettings(base_model=Path("m"), loop=TrainConfig(alpha=alpha)))

    config = DistillConfig(
        recorded=Path("r.json"), test_sets={"t": Path("t.json")}, students={"mcc": method(0.1), "std": method(0.0)}
    )
    assert config.baseline_method == "std"


@pytest.mark.parametrize(
    ("stage", "settings", "field", "message"),
    [
        ("select", {"k": 0}, "k", "greater than or equal to 1"),
        ("train", {"base_model": "m", "loop": {"alpha": -0.1}}, "loop.alpha", "greater than or equal to 0"),
        ("train", {"base_model": "m", "loop": {"temperature": 0}}, "loop.temperature", "greater than 0"),
        ("sample", {"teachers": [{"name": "t", "model": "m"}], "sampling": {"top_p": 0}}, "sampling.top_p", "than 0"),
    ],
)
def test_the_stage_command_line_prints_one_line_naming_the_field(tmp_path, capsys, stage, settings, field, message):
    from mcckd.__main__ import main

    with pytest.raises(SystemExit) as caught:
        main([stage, "--settings", json.dumps(settings), "--out", str(tmp_path / "out")])
    assert caught.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mcckd {stage}: error: --settings: {stage} settings: field {field!r}: Input should be ")
    assert message in line


def distill_config(tmp_path: Path, alpha: float, k: int) -> Path:
    loop = {"alpha": alpha, "epochs": 1}
    config = {
        "recorded": "recorded.json",
        "test_sets": {"t": "t.json"},
        "select": {"k": k},
        "students": {
            "std_cot": {"train": {"base_model": "m", "loop": {**loop, "alpha": 0.0}}},
            "mcc_kd": {"train": {"base_model": "m", "loop": loop}},
        },
    }
    path = tmp_path / "x.json"
    path.write_text(json.dumps(config))
    return path


def never_run(*args, **kwargs):
    raise AssertionError("the settings were accepted and the flow started")


def test_a_flow_config_file_prints_one_line_per_bad_field(tmp_path, capsys, monkeypatch):
    import flows.distill

    monkeypatch.setattr(flows.distill, "distill", never_run)
    path = distill_config(tmp_path, alpha=-0.05, k=0)
    monkeypatch.setattr(sys, "argv", ["flows.distill", "--config", str(path)])
    with pytest.raises(SystemExit) as caught:
        flows.distill.main()
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"flows.distill: error: {path}: field 'select.k': Input should be greater than or equal to 1",
        f"flows.distill: error: {path}: field 'students.mcc_kd.train.loop.alpha': "
        "Input should be greater than or equal to 0",
    ]


@pytest.mark.parametrize(
    ("module", "argv", "line"),
    [
        (
            "flows.real",
            ["--settings", '{"loop": {"alpha": -0.1}}'],
            "flows.real: error: --settings: field 'loop.alpha': Input should be greater than or equal to 0",
        ),
        (
            "flows.sweep",
            ["--config", "{path}"],
            "flows.sweep: error: {path}: field 'select.k': Input should be greater than or equal to 1",
        ),
    ],
)
def test_the_other_flows_print_one_line_naming_the_field(tmp_path, capsys, monkeypatch, module, argv, line):
    import importlib

    flows_module = importlib.import_module(module)
    for name in ("real", "real_sweep", "real_self_distill", "cot_sweep"):
        if hasattr(flows_module, name):
            monkeypatch.setattr(flows_module, name, never_run)
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"test_sets": {"t": "t.json"}, "select": {"k": 0}}))
    monkeypatch.setattr(sys, "argv", [module, *(a.replace("{path}", str(path)) for a in argv)])
    with pytest.raises(SystemExit) as caught:
        flows_module.main()
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [line.replace("{path}", str(path))]


def schema_definitions(flow_name: str) -> dict:
    """The JSON schema of a flow's parameters, as Prefect builds it for the run form (and validates with)."""
    import importlib

    from prefect.utilities.callables import parameter_schema

    module, name = {"cot_sweep": ("flows.sweep", "cot_sweep")}.get(flow_name, (f"flows.{flow_name}", flow_name))
    flow = getattr(importlib.import_module(module), name)
    return parameter_schema(flow.fn).model_dump()["definitions"]


@pytest.mark.parametrize("flow_name", ["demo", "real", "distill", "cot_sweep"])
def test_every_flow_form_bounds_k_and_alpha(flow_name: str):
    d = schema_definitions(flow_name)
    assert d["SelectSettings"]["properties"]["k"]["minimum"] == 1
    loop = d["TrainConfig"]["properties"]
    assert loop["alpha"]["minimum"] == 0
    assert loop["alpha"]["description"] == "0 = Std-CoT; > 0 = MCC-KD consistency weight"
    assert loop["temperature"]["exclusiveMinimum"] == 0


@pytest.mark.parametrize("flow_name", ["distill", "cot_sweep"])
def test_the_ui_form_schema_carries_the_bounds(flow_name: str):
    d = schema_definitions(flow_name)
    loop = d["TrainConfig"]["properties"]
    assert loop["learning_rate"]["exclusiveMinimum"] == 0
    assert loop["epochs"]["minimum"] == 1 and loop["questions_per_batch"]["minimum"] == 1
    assert loop["gradient_accumulation_steps"]["minimum"] == 1
    assert loop["dev_fraction"]["minimum"] == 0 and loop["dev_fraction"]["exclusiveMaximum"] == 1
    assert loop["warmup_ratio"]["minimum"] == 0 and loop["warmup_ratio"]["maximum"] == 1
    assert d["LoraSettings"]["properties"]["r"]["minimum"] == 1
    sampling = d["Sampling"]["properties"]
    assert sampling["temperature"]["minimum"] == 0  # greedy teachers are allowed
    assert sampling["top_p"]["exclusiveMinimum"] == 0 and sampling["top_p"]["maximum"] == 1
    assert sampling["max_tokens"]["minimum"] == 1
    assert d["VllmSettings"]["properties"]["memory_fraction"]["maximum"] == 1
    assert d["TrainSettings"]["properties"]["processes"]["minimum"] == 1
