"""Models as inputs: the named SmolLM2-135M-Instruct source (a real Q4_1 GGUF that the set-up
installs from PyPI) dequantised into a plain folder once, chat-template students trained and
evaluated on exactly the same prompt tokens, and one-line errors for sources that cannot be used.
Nothing is mocked; the only model is the real one (no hub)."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from transformers import AutoConfig, AutoTokenizer

from flows.demo import SMALL_ENGINE
from mcckd.models import ModelSourceError, gguf_facts, model_fingerprint, resolve_model, source_file
from mcckd.rendering import ChatSettings, ChatTemplateError, Renderer
from mcckd.stages import output
from mcckd.training.data import encode_example
from mcckd.training.loss import IGNORE_INDEX

SMOLLM2 = "SmolLM2-135M-Instruct"


def run_stage(stage: str, settings: dict, given: str, out) -> subprocess.CompletedProcess:
    """``python -m mcckd STAGE`` as a user runs it."""
    command = [sys.executable, "-m", "mcckd", stage, "--settings", json.dumps(settings), "--in", given]
    return subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def smollm2():
    """The dequantised folder (about a minute the first time on 2 cores, then cached in .cache/models)."""
    return resolve_model(SMOLLM2)


@pytest.mark.slow
def test_the_named_gguf_becomes_a_plain_folder_once(smollm2):
    record = json.loads((smollm2 / "source.json").read_text())
    assert record["quantized"] and record["architecture"] == "llama" and "Q4_1" in record["tensor_types"]
    assert record["fingerprint"] == model_fingerprint(SMOLLM2) == smollm2.name.rsplit("-", 1)[1]
    config = AutoConfig.from_pretrained(str(smollm2))
    assert config.architectures == ["LlamaForCausalLM"] and config.vocab_size == 49152
    assert getattr(config, "quantization_config", None) is None  # vLLM and peft see a plain checkpoint
    assert resolve_model(SMOLLM2) == smollm2  # cached: not dequantised again
    assert resolve_model(source_file(SMOLLM2)) == smollm2  # the GGUF file by path is the same source
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2))
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer("1200", add_special_tokens=False)["input_ids"] == [
        tokenizer.convert_tokens_to_ids(d) for d in "1200"
    ]


@pytest.mark.slow
def test_smollm2_trains_and_is_evaluated_on_its_chat_template(smollm2, tmp_path):
    """Through the command line, as a user runs it: the loss covers only the reply and its
    <|im_end|>, and evaluation gives vLLM exactly the prompt tokens training used."""
    rows = [
        {
            "question_id": f"q{i}",
            "question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
            "answer": str(a + b),
            "rationales": [f"He has {a} + {b} = {a + b} apples. The answer is {a + b}."],
            "answer_spans": [{"start": 0, "end": 0}],
            "teachers": ["t"],
            "sample_indices": [0],
        }
        for i, (a, b) in enumerate([(3, 4), (10, 5)])
    ]
    for row in rows:
        text = row["rationales"][0]
        row["answer_spans"] = [{"start": len(text) - 1 - len(row["answer"]), "end": len(text) - 1}]
    from data_schemas import TRAINSET, write_table

    write_table(rows, tmp_path / "trainset_in.parquet", TRAINSET)
    questions = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    (tmp_path / "test.json").write_text(json.dumps(questions))
    train = {"base_model": SMOLLM2, "loop": {"epochs": 1, "questions_per_batch": 2, "learning_rate": 1e-5}}
    done = run_stage("train", train, f"trainset={tmp_path / 'trainset_in.parquet'}", tmp_path / "student")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["chat_template"] and summary["rejected"] == 0 and summary["steps"] == 1
    shown = output("train", tmp_path / "student", "rendered_examples").read_text()
    assert "<|im_start|>user\nTom has 3 apples" in shown and "Let's think step by step.<|im_end|>" in shown
    assert "<|im_start|>assistant\n[[He has 3 + 4 = 7 apples. The answer is {{7}}.<|im_end|>]]" in shown

    evaluate = {"model": str(output("train", tmp_path / "student", "model")), "model_name": "s", "max_tokens": 48}
    evaluate["vllm"] = SMALL_ENGINE.model_dump()
    done = run_stage("evaluate", evaluate, f"svamp={tmp_path / 'test.json'}", tmp_path / "eval")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["chat_template"]
    predictions = pq.read_table(output("evaluate", tmp_path / "eval", "predictions")).to_pylist()
    assert len(predictions) == 2 and all(p["generation"] for p in predictions)
    assert all("<|im_start|>" not in p["generation"] for p in predictions)  # it answered, not role-played

    # The prompt tokens of training are the prompt tokens vLLM was given.
    tokenizer = AutoTokenizer.from_pretrained(str(output("train", tmp_path / "student", "model")))
    renderer = Renderer(tokenizer)
    encoded = encode_example(tokenizer, renderer.example("q0", rows[0]["question"], "x. The answer is 7.", None), 512)
    prompt = renderer.prompt_ids(rows[0]["question"])
    assert encoded.input_ids[: len(prompt)] == prompt
    assert set(encoded.labels[: len(prompt)]) == {IGNORE_INDEX} and IGNORE_INDEX not in encoded.labels[len(prompt) :]
    assert encoded.input_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") == renderer.stop_token_ids[0]
    assert prompt.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant


def test_a_folder_without_weights_or_tokenizer_is_named(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError, match=r"m: not a model folder: no weights, no tokenizer"):
        resolve_model(tmp_path / "m")
    with pytest.raises(ModelSourceError, match="no such model folder or GGUF file, and not a named source"):
        resolve_model("Nonexistent-1B")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ModelSourceError, match=r"a model source is a folder or a \.gguf file"):
        resolve_model(tmp_path / "w.txt")


def test_a_gguf_that_is_not_a_causal_lm_is_named(tmp_path):
    from gguf import GGUFWriter

    vocab_only = tmp_path / "vocab.gguf"
    writer = GGUFWriter(str(vocab_only), "llama")
    writer.add_tokenizer_model("llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelSourceError, match=r"vocab\.gguf: GGUF architecture 'llama' holds no causal-LM weights"):
        gguf_facts(vocab_only)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelSourceError, match=r"junk\.gguf: not a readable GGUF file"):
        resolve_model(tmp_path / "junk.gguf", cache=tmp_path / "cache")


def test_a_chat_template_that_cannot_render_a_user_turn_is_named(demo_tokenizer):
    tok = demo_tokenizer.__class__.from_pretrained(demo_tokenizer.name_or_path)
    tok.chat_template = "{{ raise_exception('Only system messages are supported') }}"
    with pytest.raises(ChatTemplateError, match="m1: the chat template cannot render a user turn"):
        Renderer(tok, source="m1")
    tok.chat_template = "{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}{% endif %}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="drops the user turn's text"):
        Renderer(tok, source="m1")
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        Renderer(demo_tokenizer, settings=ChatSettings(use="always"), source="demo")
    assert not Renderer(tok, settings=ChatSettings(use="never")).chat  # the plain prompt file instead
