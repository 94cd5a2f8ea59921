"""The sample stage with real vLLM offline teachers: several teachers and prompts in one run,
kill and resume, chat templates and prompt files. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from flows.demo import SMALL_ENGINE
from mcckd.demo_world.assets import STUDENT_BASE_DIR, TEACHER_DIR
from mcckd.rendering import Renderer
from mcckd.stages import execute, output, work_dir_for
from mcckd.stages.sample import PromptSpec, SampleSettings
from mcckd.teachers import TEACHER_CHAT, TeacherSpec, teacher_prompt
from tests.demo_questions import questions_file
from tests.processes import start, wait_while_running


@pytest.mark.slow  # two vLLM engines
def test_several_teachers_and_prompts_in_one_run(tmp_path):
    teachers = [
        TeacherSpec(name="teacher", model=str(TEACHER_DIR), vllm=SMALL_ENGINE),
        TeacherSpec(name="student-base", model=str(STUDENT_BASE_DIR), vllm=SMALL_ENGINE),
    ]
    prompts = [PromptSpec(cot_format="plain", granularity="1"), PromptSpec(cot_format="symbolic", granularity="3")]
    settings = SampleSettings(teachers=teachers, prompts=prompts, num_samples=2, shard_size=4)
    summary = execute("sample", settings, tmp_path / "out", {"questions": questions_file(tmp_path / "q.parquet", 6)})
    rows = pq.read_table(output("sample", tmp_path / "out", "samples")).to_pylist()
    assert summary["samples"] == len(rows) == 6 * 2 * 2 * 2
    keys = {(r["question_id"], r["teacher"], r["cot_format"], r["granularity"], r["sample_index"]) for r in rows}
    assert len(keys) == len(rows)
    assert {r["teacher_fingerprint"] for r in rows if r["teacher"] == "teacher"} != {
        r["teacher_fingerprint"] for r in rows if r["teacher"] == "student-base"
    }
    symbolic = [r for r in rows if r["teacher"] == "teacher" and r["cot_format"] == "symbolic"]
    assert all("Style: symbolic 3" in r["prompt"] for r in symbolic)
    assert [t["teacher"] for t in summary["throughput"]] == ["teacher", "student-base"]
    assert all(t["prompts"] == 12 and t["generated_tokens_per_s"] > 0 for t in summary["throughput"])


@pytest.mark.slow  # python -m mcckd sample: vLLM, twice
def test_killed_sampling_resumes_with_exactly_one_row_per_sample(tmp_path):
    q = questions_file(tmp_path / "q.parquet", 24)
    out = tmp_path / "out"
    teacher = TeacherSpec(
        name="teacher", model=str(TEACHER_DIR), vllm=SMALL_ENGINE.model_copy(update={"max_num_seqs": 8})
    )
    settings = SampleSettings(teachers=[teacher], num_samples=2, shard_size=4, seed=3)
    cmd = [sys.executable, "-m", "mcckd", "sample", "--out", str(out), "--settings", settings.model_dump_json()]
    cmd += ["--in", f"questions={q}"]
    shard_dir = work_dir_for(out) / "shards" / "teacher"
    # A new session, killed as a group below: SIGKILL to the stage alone would orphan vLLM's engine
    # processes, which keep their memory (the flow's task also runs each stage as its own group).
    log = tmp_path / "stderr.log"
    proc = start(cmd, log)
    wait_while_running(proc, lambda: len(list(shard_dir.glob("*.parquet"))) >= 3, "3 shards", 300, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.read_bytes() for p in shard_dir.glob("*.parquet")}
    assert 3 <= len(before) < 6 and not (out / "manifest.json").exists()

    # Resumed with two engines side by side, one core each: same rows, every sample exactly once.
    two = settings.model_copy(update={"engines": 2}).model_dump_json()
    done = subprocess.run([*cmd[:7], two, *cmd[8:]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["shards_resumed"] == len(before) and summary["shards"] == 6  # 24 questions, 4 a shard
    rows = pq.read_table(output("sample", out, "samples")).to_pylist()
    assert len(rows) == 48
    assert len({(r["question_id"], r["sample_index"]) for r in rows}) == 48
    assert {r["question_id"] for r in rows} == {f"q{i}" for i in range(24)}


@pytest.mark.slow  # starts two vLLM engine processes
def test_a_failing_engine_stops_the_stage_with_its_name(tmp_path):
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    broken = TeacherSpec(name="teacher", model=str(model), vllm=SMALL_ENGINE)
    settings = SampleSettings(teachers=[broken], num_samples=1, shard_size=2, engines=2)
    with pytest.raises(RuntimeError, match=r"engine teacher-engine[01] exited with 1"):
        execute("sample", settings, tmp_path / "out", {"questions": questions_file(tmp_path / "q.parquet", 4)})
    assert not (tmp_path / "out").exists()


def test_chat_template_wraps_the_prompt_for_instruct_models(demo_tokenizer):
    tok = demo_tokenizer.__class__.from_pretrained(demo_tokenizer.name_or_path)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% if m.role == 'assistant' %}</s>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    renderer = Renderer(tok, settings=TEACHER_CHAT)
    assert renderer.prompt_text("What is 2+3?") == "<|user|>What is 2+3?<|assistant|>"
    ids = tok("<|user|>What is 2+3?<|assistant|>")["input_ids"][1:]  # the template's text, no second BOS
    assert teacher_prompt(renderer, "What is 2+3?") == {"prompt_token_ids": ids}
    assert teacher_prompt(None, "What is 2+3?") == "What is 2+3?"


@pytest.mark.parametrize("template", ["demo_teacher", "zero_shot_cot", "few_shot_cot"])
def test_prompt_templates_render_question_and_style(template):
    from mcckd.prompts import load_prompt, render

    text = render(load_prompt(template), "  How many apples?  ", "subq", "3")
    assert text.rstrip().endswith("Answer:") and "How many apples?" in text and "subq 3" in text
    if template.startswith("few_shot"):
        assert len(re.findall(r"The answer is \d+\.", text)) == 3  # the worked examples
