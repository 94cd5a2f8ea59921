"""Stage 1, sample: each teacher writes N rationales per (question, prompt), written shard by shard.

In: questions with gold answers, in any format :mod:`mcckd.readers` reads (Parquet with the
``QUESTIONS`` schema, GSM8K jsonl, the MCC-KD JSON files, ...). Out (``STAGE.outputs``): the samples
(``SAMPLES``), exactly one row per (question, teacher, prompt, sample index), with the teacher's identity, template, CoT
format and granularity, sampling parameters, finish reason and token counts on every row; and
the throughput (prompts/s, generated tokens/s and token totals per teacher).

Resumable: each shard (``shard_size`` questions x one teacher x one prompt) is written to the work
folder the moment it completes; a killed run's next attempt generates only the missing shards.
Seeds are per question (vLLM) or per sample (HTTP), so a resumed run writes the same rows.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from data_schemas import SAMPLES, write_table
from mcckd.cluster import RaySettings, sample_on_ray
from mcckd.prompts import load_prompt, render
from mcckd.readers import read_questions
from mcckd.settings import HOW_IT_RUNS, Settings
from mcckd.stages.spec import SAMPLES_FILE, Output, StageSpec
from mcckd.store import fingerprint, write_progress
from mcckd.teachers import Completion, Request, Sampling, TeacherSpec, run_teacher, teacher_fingerprint


class PromptSpec(Settings):
    """A template file in ``prompts/`` (zero- or few-shot) and the two CoT factors of arXiv 2502.18001."""

    template: str = Field("demo_teacher", description="the prompt file in prompts/ (without .txt)")
    cot_format: str = Field(
        "any", description="plain, subq (sub-question chains), rar (rephrase and respond), symbolic"
    )
    granularity: str = Field("any", description="terse (1) to detailed (3)")


class SampleSettings(Settings):
    teachers: list[TeacherSpec] = Field(description="the teachers, with distinct names")
    prompts: list[PromptSpec] = Field([PromptSpec()], description="prompts each teacher answers every question with")
    num_samples: int = Field(4, ge=1, description="rationales per question, teacher and prompt")
    sampling: Sampling = Field(Sampling(), description="the teachers' decoding")
    seed: int = Field(0, description="with the question id, each question's sampling seed")
    shard_size: int = Field(
        64, ge=1, description="questions per shard: the unit written to disk, and the most a kill loses"
    )
    max_questions: int | None = Field(None, ge=1, description="only the file's first N questions (a quick run)")
    engines: int = Field(
        1,
        ge=1,
        description="local vLLM teachers on a CPU: engines side by side, each pinned to its share of the cores "
        "and given every n-th shard; a small teacher keeps one core busy (the demo teacher: 2 engines on 2 cores "
        "sample twice as fast as 1); a large one gains nothing",
    )
    # Where the engines run changes no row: left out of the fingerprint, so a run begun locally
    # resumes on the cluster from the same shards, and the other way round.
    backend: Literal["local", "ray"] = Field(
        "local",
        description="local: vLLM engines in this machine's processes (engines); ray: one engine per replica on a "
        "Ray cluster (ray), shards written to the work folder, which every node must see",
        json_schema_extra=HOW_IT_RUNS,
    )
    ray: RaySettings = Field(RaySettings(), description="the cluster (backend ray)", json_schema_extra=HOW_IT_RUNS)

    @model_validator(mode="after")
    def _distinct(self) -> SampleSettings:
        names = [t.name for t in self.teachers]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"teachers need distinct names, got {names}")
        if len({p.model_dump_json() for p in self.prompts}) != len(self.prompts):
            raise ValueError("the same prompt is listed twice")
        return self


STAGE = StageSpec(
    name="sample",
    settings=SampleSettings,
    version=3,
    inputs=("questions",),
    user_files=("questions",),
    outputs={
        "samples": SAMPLES_FILE,
        "throughput": Output("throughput.json", description="prompts/s, generated tokens/s and totals per teacher"),
    },
    uses_accelerator=True,
    resumable=True,
    retries=1,
)


def request_seed(base_seed: int, question_id: str) -> int:
    """A per-question seed: a question's samples do not depend on batching, sharding or resuming."""
    return int(fingerprint(base_seed, question_id)[:8], 16)


@dataclass
class ShardPlan:
    path: Path
    teacher: TeacherSpec
    teacher_fp: str
    prompt: PromptSpec
    questions: list[dict]
    prompts: list[str]

    def requests(self, n: int, seed: int) -> list[Request]:
        return [
            Request(p, n, request_seed(seed, q["question_id"]))
            for q, p in zip(self.questions, self.prompts, strict=True)
        ]

    def write(self, completions: list[list[Completion]], sampling: Sampling) -> None:
        write_table(self.rows(completions, sampling), self.path, SAMPLES)

    def rows(self, completions: list[list[Completion]], sampling: Sampling) -> list[dict]:
        rows = []
        for q, prompt, samples in zip(self.questions, self.prompts, completions, strict=True):
            for i, c in enumerate(samples):
                rows.append(
                    {
                        **q,
                        "teacher": self.teacher.name,
                        "teacher_fingerprint": self.teacher_fp,
                        "template": self.prompt.template,
                        "granularity": self.prompt.granularity,
                        "cot_format": self.prompt.cot_format,
                        "prompt": prompt,
                        "sample_index": i,
                        "rationale": c.text.strip(),
                        "finish_reason": c.finish_reason,
                        "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens,
                        **sampling.model_dump(),
                        "seed": c.seed,
                    }
                )
        return rows


def plan_shards(settings: SampleSettings, questions: list[dict], work_dir: Path) -> dict[str, list[ShardPlan]]:
    """Every shard of the run, per teacher, in output order (teacher, prompt, question)."""
    plan: dict[str, list[ShardPlan]] = {}
    for teacher in settings.teachers:
        teacher_fp = teacher_fingerprint(teacher)
        shards = plan[teacher.name] = []
        for p_index, spec in enumerate(settings.prompts):
            template = load_prompt(spec.template)
            for start in range(0, len(questions), settings.shard_size):
                chunk = questions[start : start + settings.shard_size]
                texts = [render(template, q["question"], spec.cot_format, spec.granularity) for q in chunk]
                path = (
                    work_dir
                    / "shards"
                    / teacher.name
                    / f"prompt{p_index:02d}-{start // settings.shard_size:06d}.parquet"
                )
                shards.append(ShardPlan(path, teacher, teacher_fp, spec, chunk, texts))
    return plan


class Progress:
    """Shards done and per-teacher seconds in the work folder's ``progress.json``, across resumed runs."""

    def __init__(self, work_dir: Path, done: int, total: int) -> None:
        self.path = work_dir / "progress.json"
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.seconds: dict[str, float] = old.get("seconds", {})
        self.done, self.total = done, total

    def shard_written(self, teacher: str, seconds: float) -> None:
        self.done += 1
        self.seconds[teacher] = seconds
        write_progress(self.path, self.done, self.total, unit="shards", seconds=self.seconds)


def run(settings: SampleSettings, out_dir: Path, questions: Path, work_dir: Path) -> dict:
    table = read_questions(questions)[: settings.max_questions]
    plan = plan_shards(settings, table, work_dir)
    all_shards = [s for shards in plan.values() for s in shards]
    found = sum(s.path.is_file() for s in all_shards)
    progress = Progress(work_dir, found, len(all_shards))
    replicas: list[dict] = []  # backend ray: who sampled what
    for teacher in settings.teachers:
        shards = plan[teacher.name]
        pending = [(i, s) for i, s in enumerate(shards) if not s.path.is_file()]
        if not pending:
            continue
        started = time.perf_counter() - progress.seconds.get(teacher.name, 0.0)

        def write_shard(index: int, completions: list[list[Completion]], shards=shards, started=started) -> None:
            shards[index].write(completions, settings.sampling)
            progress.shard_written(shards[index].teacher.name, time.perf_counter() - started)

        engines = min(settings.engines, len(pending), len(os.sched_getaffinity(0)))
        if teacher.backend == "vllm" and settings.backend == "ray":
            replicas += sample_on_ray(settings, [s for _, s in pending], work_dir, progress, started)
        elif teacher.backend == "vllm" and engines > 1:
            engines_side_by_side(engines, teacher, settings, [s for _, s in pending], progress, started)
        else:
            requests = [(i, s.requests(settings.num_samples, settings.seed)) for i, s in pending]
            run_teacher(teacher, settings.sampling, requests, write_shard)
    samples = pa.concat_tables([pq.read_table(s.path, schema=SAMPLES) for s in all_shards])
    check_exactly_once(samples, len(table) * len(settings.prompts) * len(settings.teachers) * settings.num_samples)
    STAGE.write(out_dir, "samples", samples)
    throughput = teacher_throughput(samples, progress.seconds)
    STAGE.path(out_dir, "throughput").write_text(json.dumps(throughput, indent=2))
    return {
        "questions": len(table),
        "teachers": [t.name for t in settings.teachers],
        "prompts": len(settings.prompts),
        "samples": samples.num_rows,
        "generated_tokens": sum(t["generated_tokens"] for t in throughput),
        "shards": len(all_shards),
        "shards_resumed": found,
        "throughput": throughput,
        **({"replicas": replicas} if replicas else {}),
    }


def engine(cores: list[int], teacher: TeacherSpec, settings: SampleSettings, shards: list[ShardPlan]) -> None:
    """One of several engines (a process of its own), pinned to ``cores``: writes each of its shards
    as it completes, as the single-engine path does."""
    os.sched_setaffinity(0, cores)  # before vLLM starts: it binds its threads to this process's cores

    requests = [(i, s.requests(settings.num_samples, settings.seed)) for i, s in enumerate(shards)]
    run_teacher(
        teacher, settings.sampling, requests, lambda i, completions: shards[i].write(completions, settings.sampling)
    )


def engines_side_by_side(
    n: int, teacher: TeacherSpec, settings: SampleSettings, pending: list[ShardPlan], progress: Progress, started: float
) -> None:
    """``n`` engine processes, each on its share of the cores and every n-th pending shard; progress
    counts the shards they write. One that fails stops the others and raises; shards already
    written stay, so a rerun resumes."""
    cores = sorted(os.sched_getaffinity(0))
    shares = [cores[i * len(cores) // n : (i + 1) * len(cores) // n] for i in range(n)]
    context = multiprocessing.get_context("spawn")  # vLLM and torch do not survive a fork
    workers = [
        context.Process(target=engine, args=(share, teacher, settings, pending[i::n]), name=f"{teacher.name}-engine{i}")
        for i, share in enumerate(shares)
    ]
    for w in workers:
        w.start()
    seen: set[Path] = set()
    try:
        while True:
            alive = [w for w in workers if w.is_alive()]
            for shard in pending:
                if shard.path not in seen and shard.path.is_file():
                    seen.add(shard.path)
                    progress.shard_written(teacher.name, time.perf_counter() - started)
            failed = [w for w in workers if w.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"sample: engine {failed[0].name} exited with {failed[0].exitcode} (its log above)")
            if not alive:
                break
            time.sleep(1)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
            w.join()


def check_exactly_once(samples: pa.Table, expected: int) -> None:
    """One row per (question, teacher, prompt, sample index): none lost, none duplicated."""
    key = ["question_id", "teacher", "template", "cot_format", "granularity", "sample_index"]
    distinct = samples.group_by(key).aggregate([]).num_rows
    if distinct != samples.num_rows or samples.num_rows != expected:
        raise RuntimeError(f"samples: {samples.num_rows} rows, {distinct} distinct keys, {expected} expected")


def teacher_throughput(samples: pa.Table, seconds: dict[str, float]) -> list[dict]:
    """Per teacher: prompts, samples, token totals, and rates over its wall time (engine start included)."""
    out = []
    for name in dict.fromkeys(samples.column("teacher").to_pylist()):
        rows = samples.filter(pc.equal(samples["teacher"], name))
        wall = seconds.get(name, 0.0)
        first = rows.filter(pc.equal(rows["sample_index"], 0))
        generated = pc.sum(rows["completion_tokens"]).as_py() or 0
        out.append(
            {
                "teacher": name,
                "prompts": first.num_rows,
                "samples": rows.num_rows,
                "prompt_tokens": pc.sum(first["prompt_tokens"]).as_py() or 0,
                "generated_tokens": generated,
                "seconds": round(wall, 2),
                "prompts_per_s": round(first.num_rows / wall, 2) if wall else None,
                "generated_tokens_per_s": round(generated / wall, 1) if wall else None,
            }
        )
    return out
