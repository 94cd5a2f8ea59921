"""The demo world's invariants: what its problems, rationales and student-base text promise.

The demo's figures only mean something if the problems stay in the stated number range, every
rationale the generator writes is correct as the judge reads it, and the student base is
pretrained on reading, never on solved problems.
"""

from __future__ import annotations

import json
import random
import re

import pandas as pd
import pytest
from transformers import PreTrainedTokenizerFast

from mcckd.answers import answers_match, extract_answer
from mcckd.demo_world.assets import STUDENT_BASE_DIR, TEACHER_DIR, TOKENIZER_DIR
from mcckd.demo_world.build import (
    BUILD_SEED,
    TOKENIZER_VOCAB,
    examples_digest,
    student_base_examples,
    student_base_texts,
    teacher_examples,
    tokenizer_texts,
)
from mcckd.demo_world.problems import (
    ASIDES,
    EVENTS,
    FORMATS,
    GRANULARITIES,
    MAX_AMOUNT,
    SPLITS,
    generate_split,
    write_question_sets,
    write_rationale,
)
from mcckd.demo_world.tokenizer import train_tokenizer


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_problems_stay_in_range_and_are_reproducible(split):
    problems = generate_split(split, 300, seed=5)
    assert problems == generate_split(split, 300, seed=5)
    assert len({p.question for p in problems}) == 300
    for p in problems:
        assert len(p.events) in SPLITS[split].steps
        assert all(1 <= e.amount <= MAX_AMOUNT for e in p.events)
        assert all(0 <= before <= 99 and 0 <= after <= 99 for before, _, _, after in p.steps)
        assert len(p.asides) <= SPLITS[split].asides


def test_only_in_distribution_problems_tell_asides_and_the_detailed_plain_rationales_walk_them():
    rng = random.Random(0)
    counts = {}
    for split in SPLITS:
        for p in generate_split(split, 300, seed=5):
            counts.setdefault(split, set()).add(len(p.asides))
            said = [sentence for i, sentence in p.told if i is None]
            assert len(p.question.split(". ")) == len(p.events) + len(said) + 2
            for fmt in FORMATS:
                for level in GRANULARITIES:
                    text = write_rationale(p, fmt, level, rng)
                    walked = fmt == "plain" and level >= 2
                    assert all((s[:-1] in text) == walked for s in said), (fmt, level, text)
                    assert text.count("still") == (len(said) if walked else 0), text
    assert counts == {"id": {0, 1, 2}, "ood_steps": {0}, "ood_templates": {0}, "ood_mixed": {0}}
    assert len({t for p in generate_split("id", 300, seed=5) for _, t in p.asides}) == len(ASIDES)


def test_a_mixed_problem_tells_exactly_one_event_in_an_unseen_sentence():
    unseen = {template for _, template in EVENTS["ood"]}
    places = set()
    for p in generate_split("ood_mixed", 300, seed=5):
        [place] = [i for i, e in enumerate(p.events) if e.template in unseen]
        places.add(place)
    assert places == {0, 1, 2}  # anywhere in the problem


def test_every_rationale_style_is_correct_as_the_judge_reads_it():
    rng = random.Random(0)
    for split in SPLITS:
        for p in generate_split(split, 40, seed=9):
            for fmt in FORMATS:
                for level in GRANULARITIES:
                    text = write_rationale(p, fmt, level, rng)
                    assert text.endswith(f"The answer is {p.answer}.")
                    assert answers_match(extract_answer(text, question=p.question), str(p.answer)), text


def test_train_and_test_questions_are_disjoint(tmp_path):
    paths = write_question_sets(tmp_path, n_train=200, n_test=50, seed=0)
    train = set(pd.read_parquet(paths["train"]).question)
    assert len(train) == 200
    for split in SPLITS:
        test = set(pd.read_parquet(paths[split]).question)
        assert len(test) == 50 and not train & test


def test_student_base_text_reads_problems_but_never_solves_them():
    texts = student_base_texts(3000, seed=1)
    assert len(texts) == 3000
    questions = [t for t in texts if "How many" in t]
    assert len(questions) > 500
    for t in questions:
        after = t.split("?", 1)[1]
        assert "=" not in after and "answer" not in after, t  # no running amount, no result
    assert not any(re.search(r"The answer is", t) for t in texts)


def _tokenizer_model(tokenizer: PreTrainedTokenizerFast) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())["model"]  # vocabulary and merges


def test_the_committed_tokenizer_is_shared_and_reads_every_text_of_this_world():
    """The committed tokenizer (built before asides, README: the demo world) is the one all three
    models use, and it still encodes this world's text losslessly, without unknown tokens."""
    committed = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    for folder in (TEACHER_DIR, STUDENT_BASE_DIR):
        assert _tokenizer_model(PreTrainedTokenizerFast.from_pretrained(str(folder))) == _tokenizer_model(committed)
    for text in tokenizer_texts()[::7]:
        ids = committed(text, add_special_tokens=False).input_ids
        assert committed.unk_token_id not in ids and committed.decode(ids) == text, text


def test_a_tokenizer_built_from_this_world_reads_it_no_better_than_the_committed_one_by_much():
    """A rebuild of the tokenizer would gain little: the committed one's sequences are at most 10%
    longer than those of one trained on this code's text."""
    texts = tokenizer_texts()
    built = train_tokenizer(texts, vocab_size=TOKENIZER_VOCAB)
    committed = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    sample = texts[::5]
    lengths = [sum(len(t(x, add_special_tokens=False).input_ids) for x in sample) for t in (committed, built)]
    assert lengths[0] <= 1.10 * lengths[1], lengths


def test_the_committed_models_were_trained_on_the_text_this_code_writes():
    for folder, make in (
        (TEACHER_DIR, lambda n: teacher_examples(n, BUILD_SEED)),
        (STUDENT_BASE_DIR, student_base_examples),
    ):
        build = json.loads((folder / "build.json").read_text())
        assert examples_digest(make(build["examples"])) == build["examples_sha256"], folder


@pytest.mark.parametrize("layout", ["styles", "reduce", "skip-distractors", "walk-distractors-3-eq", "world"])
def test_the_ood_steps_benchmark_layouts_are_correct_and_keep_the_problems(layout):
    """``benchmarks/ood_steps.py``'s gold rationales are right as the judge reads them, their answer
    spans point at the answer, and its distractor test sets ask the plain test sets' problems."""
    import importlib.util

    from mcckd.paths import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location("ood_steps", PROJECT_ROOT / "benchmarks" / "ood_steps.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    train, tests = bench.layout_rows(layout, seed=1)
    assert len(train) == bench.N_TRAIN
    for row in train:
        for text, span in zip(row["rationales"], row["answer_spans"], strict=True):
            assert answers_match(extract_answer(text), row["answer"]), text
            assert text[span["start"] : span["end"]] == row["answer"]
    for split, rows in tests.items():
        plain = tests[split.removesuffix("_d")]
        assert [r["answer"] for r in rows] == [r["answer"] for r in plain]
        distractors = sum(
            len(r["question"].split(". ")) - len(p["question"].split(". ")) for r, p in zip(rows, plain, strict=True)
        )
        assert (distractors > 0) == split.endswith("_d"), split
