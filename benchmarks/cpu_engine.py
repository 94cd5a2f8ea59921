"""vLLM's CPU engine as ``open_llm`` runs it against vLLM's defaults, on the demo teacher.

    python benchmarks/cpu_engine.py [--prompts 300] [--repeats 3]

Each configuration runs in its own child process (the settings are read at engine start), with the
same prompts, per-prompt seeds and KV-cache size (0.5 GiB), ``--repeats`` times in turn:

- default: vLLM's engine-core and worker processes, OpenMP bound to one core, one reserved;
- in_process: ``mcckd.generation.cpu_engine_env``: no engine processes, every core bound, none reserved.

Reports engine start (``LLM(...)``, import excluded) and generated tokens/s of one ``generate`` over
every prompt (two samples each, temperature 0.8), median and range over the repeats; the last lines
are the headline ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_OMP_THREADS_BIND": "auto"}


def child(prompts: int, in_process: bool) -> dict:
    from mcckd.runtime import configure_local_runtime

    configure_local_runtime()
    from vllm import LLM, SamplingParams

    from mcckd.demo_world.assets import TEACHER_DIR
    from mcckd.demo_world.problems import generate_split
    from mcckd.generation import VllmSettings, open_llm
    from mcckd.prompts import load_prompt, render

    template = load_prompt("demo_teacher")
    texts = [render(template, p.question, "plain", "2") for p in generate_split("id", prompts, 11)]
    params = [SamplingParams(n=2, temperature=0.8, max_tokens=192, seed=i) for i in range(len(texts))]
    settings = VllmSettings(kv_cache_gib=0.5)
    started = time.perf_counter()
    if in_process:
        with open_llm(TEACHER_DIR, settings) as llm:
            ready = time.perf_counter()
            outputs = llm.generate(texts, params, use_tqdm=False)
            done = time.perf_counter()
    else:  # the same engine arguments, the executor and threads left to vLLM
        llm = LLM(
            model=str(TEACHER_DIR),
            kv_cache_memory_bytes=int(settings.kv_cache_gib * 2**30),
            enforce_eager=settings.enforce_eager,
            enable_chunked_prefill=settings.chunked_prefill,
            seed=0,
        )
        ready = time.perf_counter()
        outputs = llm.generate(texts, params, use_tqdm=False)
        done = time.perf_counter()
        llm.llm_engine.engine_core.shutdown()
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"engine_s": ready - started, "tokens": tokens, "tokens_per_s": tokens / (done - ready)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["default", "in_process"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.prompts, args.child == "in_process")), flush=True)
        return
    results: dict[str, list[dict]] = {"default": [], "in_process": []}
    for _ in range(args.repeats):
        for name in results:
            env = os.environ | (DEFAULT_ENV if name == "default" else {})
            cmd = [sys.executable, __file__, "--child", name, "--prompts", str(args.prompts)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            results[name].append(json.loads(lines[-1].removeprefix("RESULT ")))
    summary = {}
    for name, runs in results.items():
        for key in ("engine_s", "tokens_per_s"):
            values = [r[key] for r in runs]
            summary[name, key] = statistics.median(values)
            print(f"{name} {key}: median {summary[name, key]:.1f} (range {min(values):.1f}-{max(values):.1f})")
    engine = summary["default", "engine_s"] / summary["in_process", "engine_s"]
    speed = summary["in_process", "tokens_per_s"] / summary["default", "tokens_per_s"]
    print(f"engine_start_speedup: {engine:.2f}")
    print(f"tokens_per_s_ratio: {speed:.2f}")


if __name__ == "__main__":
    main()
