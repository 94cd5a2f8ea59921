"""What the sample stage costs over a bare ``LLM.generate`` on the same prompts and model.

    python benchmarks/sampling.py [--questions 600] [--samples 4] [--shard-size 64]

Both run in their own child process, one after the other, on the demo teacher with the same
engine settings, prompts and per-question seeds, each timed as a whole job: from before vLLM is
imported to the engine shut down (memory returned), with the results in hand:

- bare: ``import vllm``, ``LLM(...)``, one ``LLM.generate`` call over every prompt (nothing
  written), engine shutdown;
- stage: ``mcckd.stages.execute("sample", ...)``: read the questions, plan shards, drive the
  engine, write every shard as it completes, check one row per sample, write the samples.

Prints both times and the samples/s, then ``overhead_ratio`` (stage / bare) as the last line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # vLLM spawns processes: nothing heavy at import time
    from mcckd.runtime import configure_local_runtime

    configure_local_runtime()


def settings(samples: int, shard_size: int):
    from mcckd.demo_world.assets import TEACHER_DIR
    from mcckd.stages.sample import SampleSettings
    from mcckd.teachers import TeacherSpec

    return SampleSettings(
        teachers=[TeacherSpec(name="demo-teacher", model=str(TEACHER_DIR))], num_samples=samples, shard_size=shard_size
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


def stage(q: Path, samples: int, shard_size: int) -> dict:
    from mcckd.stages import execute

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = execute("sample", settings(samples, shard_size), Path(tmp) / "out", {"questions": q})
        ended = time.perf_counter()
    return {"seconds": ended - started, "samples": summary["samples"], "tokens": summary["generated_tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=600)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--child", choices=["bare", "stage"], help=argparse.SUPPRESS)
    parser.add_argument("--questions-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fn = bare if args.child == "bare" else stage
        print("RESULT " + json.dumps(fn(args.questions_file, args.samples, args.shard_size)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        q = questions(Path(tmp) / "questions.parquet", args.questions)
        runs = {}
        for name in ("bare", "stage"):
            cmd = [sys.executable, __file__, "--child", name, "--questions-file", str(q)]
            cmd += ["--samples", str(args.samples), "--shard-size", str(args.shard_size)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            runs[name] = json.loads(result[-1].removeprefix("RESULT "))
            r = runs[name]
            rate = r["samples"] / r["seconds"]
            print(f"{name}: {r['seconds']:.1f} s for {r['samples']} samples ({rate:.1f}/s, {r['tokens']} tokens)")
    print(f"bare LLM.generate alone (engine already up): {runs['bare']['generate_seconds']:.1f} s")
    print(f"overhead_ratio: {runs['stage']['seconds'] / runs['bare']['seconds']:.3f}")


if __name__ == "__main__":
    main()
