"""What the sample stage costs over a bare ``LLM.generate``, and on a Ray cluster against the local engines.

    python benchmarks/sampling.py [--questions 600] [--samples 4] [--shard-size 64] [--engines 2] [--rounds 3]

Each job runs in its own child process, one after the other, on the demo teacher with the same
engine settings, prompts and per-question seeds, each timed as a whole job: from before vLLM (or
Ray) is imported to the engines shut down, with the results in hand:

- bare: ``import vllm``, ``LLM(...)``, one ``LLM.generate`` call over every prompt (nothing
  written), engine shutdown (one engine on every core);
- local: ``mcckd.stages.execute("sample", ...)`` with ``engines`` engine processes side by side:
  read the questions, plan shards, drive the engines, write every shard as it completes, check one
  row per sample, write the samples;
- ray: the same stage with ``backend = "ray"``: a local Ray cluster of this machine's cores started
  by the stage, ``engines`` replicas (Ray Data actors), the cluster stopped at the end;
- ray_startup: ``ray.init`` of that local cluster until one actor answers, then shutdown: the fixed
  cost the ray job pays before its first shard.

Each job runs ``rounds`` times (interleaved); figures are median [min-max]. The last lines are the
headline: tokens/s of local and ray, Ray's start-up seconds, ``ray_vs_local`` and ``overhead_ratio``
(local stage / bare).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # vLLM spawns processes: nothing heavy at import time
    from mcckd.runtime import configure_local_runtime

    configure_local_runtime()


def settings(samples: int, shard_size: int, engines: int = 1, backend: str = "local"):
    from mcckd.demo_world.assets import TEACHER_DIR
    from mcckd.stages.sample import SampleSettings
    from mcckd.teachers import TeacherSpec

    return SampleSettings(
        teachers=[TeacherSpec(name="demo-teacher", model=str(TEACHER_DIR))],
        num_samples=samples,
        shard_size=shard_size,
        engines=engines,
        backend=backend,
        ray={"replicas": engines},
    )


def questions(path: Path, n: int) -> Path:
    from data_schemas import QUESTIONS, write_table
    from mcckd.demo_world.problems import generate_split

    rows = [
        {"question_id": f"q{i}", "question": p.question, "answer": str(p.answer)}
        for i, p in enumerate(generate_split("id", n, 11))
    ]
    return write_table(rows, path, QUESTIONS)


def bare(q: Path, samples: int, shard_size: int) -> dict:
    from data_schemas import QUESTIONS, read_table
    from mcckd.generation import open_llm
    from mcckd.prompts import load_prompt, render
    from mcckd.stages.sample import request_seed

    s = settings(samples, shard_size)
    teacher, prompt = s.teachers[0], s.prompts[0]
    rows = read_table(q, QUESTIONS).to_pylist()
    template = load_prompt(prompt.template)
    prompts = [render(template, r["question"], prompt.cot_format, prompt.granularity) for r in rows]
    started = time.perf_counter()
    from vllm import SamplingParams

    seeds = [request_seed(s.seed, r["question_id"]) for r in rows]
    params = [SamplingParams(n=samples, seed=seed, **s.sampling.model_dump()) for seed in seeds]
    with open_llm(Path(teacher.model), teacher.vllm) as llm:
        ready = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        generated = time.perf_counter()
    ended = time.perf_counter()
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {
        "seconds": ended - started,
        "generate_seconds": generated - ready,
        "samples": samples * len(rows),
        "tokens": tokens,
    }


def stage(q: Path, samples: int, shard_size: int, engines: int, backend: str) -> dict:
    from mcckd.stages import execute

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = execute(
            "sample", settings(samples, shard_size, engines, backend), Path(tmp) / "out", {"questions": q}
        )
        ended = time.perf_counter()
    return {"seconds": ended - started, "samples": summary["samples"], "tokens": summary["generated_tokens"]}


def ray_startup() -> dict:
    """A local cluster of this machine's cores, up until one actor answers, and down again."""
    started = time.perf_counter()
    import os

    import ray

    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, logging_level="WARNING")

    @ray.remote(num_cpus=1)
    class Ping:
        def ping(self) -> int:
            return 1

    ray.get(Ping.remote().ping.remote())
    up = time.perf_counter()
    ray.shutdown()
    return {"seconds": up - started, "shutdown_seconds": time.perf_counter() - up, "samples": 0, "tokens": 0}


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.1f} [{ordered[0]:.1f}-{ordered[-1]:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=600)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--engines", type=int, default=2, help="local engines, and Ray replicas")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["bare", "local", "ray", "ray_startup"], help=argparse.SUPPRESS)
    parser.add_argument("--questions-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "bare":
            result = bare(args.questions_file, args.samples, args.shard_size)
        elif args.child == "ray_startup":
            result = ray_startup()
        else:
            result = stage(args.questions_file, args.samples, args.shard_size, args.engines, args.child)
        print("RESULT " + json.dumps(result), flush=True)
        return
    jobs = ("bare", "local", "ray", "ray_startup")
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        q = questions(Path(tmp) / "questions.parquet", args.questions)
        for _ in range(args.rounds):
            for name in jobs:
                cmd = [sys.executable, __file__, "--child", name, "--questions-file", str(q)]
                cmd += ["--samples", str(args.samples), "--shard-size", str(args.shard_size)]
                cmd += ["--engines", str(args.engines)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
                result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                runs[name].append(json.loads(result[-1].removeprefix("RESULT ")))
                r = runs[name][-1]
                print(f"{name}: {r['seconds']:.1f} s, {r['samples']} samples, {r['tokens']} tokens", flush=True)
    rate = {name: [r["tokens"] / r["seconds"] for r in runs[name]] for name in ("bare", "local", "ray")}
    size = f"{args.questions} demo questions x {args.samples} samples"
    print(f"\n{size}, {args.engines} engines/replicas, {args.rounds} rounds (median [min-max])")
    for name in ("bare", "local", "ray"):
        print(f"{name}: {spread([r['seconds'] for r in runs[name]])} s, {spread(rate[name])} tokens/s")
    print(f"bare LLM.generate alone (engine already up): {spread([r['generate_seconds'] for r in runs['bare']])} s")
    print(f"ray_shutdown_s: {spread([r['shutdown_seconds'] for r in runs['ray_startup']])}")
    print(f"local_tokens_per_s: {spread(rate['local'])}")
    print(f"ray_tokens_per_s: {spread(rate['ray'])}")
    print(f"ray_startup_s: {spread([r['seconds'] for r in runs['ray_startup']])}")
    ratios = [r / lo for r, lo in zip(rate["ray"], rate["local"], strict=True)]
    print(f"ray_vs_local: {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]")
    overhead = [s["seconds"] / b["seconds"] for s, b in zip(runs["local"], runs["bare"], strict=True)]
    print(f"overhead_ratio: {statistics.median(overhead):.3f} [{min(overhead):.3f}-{max(overhead):.3f}]")


if __name__ == "__main__":
    main()
