"""Judge + select at scale: 100,000 questions x 16 rationales (generated), each similarity method.

    python benchmarks/judge_select.py [--questions 100000] [--per-question 16]

Rationales come from the demo world in every CoT format and granularity; a quarter get a wrong
final answer, so the judge has work to do. Each stage runs as its own process (``python -m mcckd``,
exactly what a container runs), timed from start to exit, with its peak memory sampled. Prints
rationales/s per method and peak memory; the last line is ``minhash_total_seconds`` (judge + select
with MinHash), the issue's target being under 120 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from data_schemas import SAMPLES, write_table
from mcckd.demo_world.problems import FORMATS, GRANULARITIES, generate_split, write_rationale
from mcckd.stages import output


def make_samples(path: Path, questions: int, per_question: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    rows = []
    for i, p in enumerate(generate_split("id", questions, seed)):
        for k in range(per_question):
            text = write_rationale(p, rng.choice(FORMATS), rng.choice(GRANULARITIES), rng)
            if rng.random() < 0.25:
                text = text.replace(f"The answer is {p.answer}.", f"The answer is {p.answer + rng.randint(1, 9)}.")
            rows.append(
                {
                    "question_id": f"q{i}",
                    "question": p.question,
                    "answer": str(p.answer),
                    "teacher": "bench",
                    "teacher_fingerprint": "-",
                    "template": "-",
                    "granularity": "any",
                    "cot_format": "any",
                    "prompt": p.question,
                    "sample_index": k,
                    "rationale": text,
                    "finish_reason": "stop",
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "temperature": 1.0,
                    "top_p": 1.0,
                    "max_tokens": 0,
                    "seed": 0,
                }
            )
    write_table(rows, path, SAMPLES)
    return len(rows)


def run_stage(args: list[str]) -> tuple[float, float]:
    """(seconds, peak resident memory in MiB) of one stage process."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcckd", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {args[0]} failed with exit code {proc.returncode}")
    return time.perf_counter() - started, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=100_000)
    parser.add_argument("--per-question", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-judge-select-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        n = make_samples(root / "generated.parquet", args.questions, args.per_question)
        print(f"generated {n} rationales in {time.perf_counter() - t:.1f} s (not timed below)")
        judge_s, judge_mb = run_stage(
            ["judge", "--in", f"samples={root / 'generated.parquet'}", "--out", str(root / "j")]
        )
        judged = output("judge", root / "j")
        results = {"judge": (judge_s, judge_mb)}
        for method in ("jaccard", "minhash"):
            settings = json.dumps({"k": 3, "similarity": method})
            out = root / f"s-{method}"
            results[f"select_{method}"] = run_stage(
                ["select", "--settings", settings, "--in", f"judged={judged}", "--out", str(out)]
            )
        correct = json.loads((root / "j" / "manifest.json").read_text())["summary"]["correct"]
    print(f"rationales: {n}, judged correct: {correct}")
    for name, (seconds, mb) in results.items():
        rate = (n if name == "judge" else correct) / seconds
        print(f"{name}: {seconds:.1f} s, {rate:,.0f} rationales/s, peak {mb:,.0f} MiB")
    print(f"judge_rationales_per_second: {n / judge_s:.0f}")
    print(f"jaccard_total_seconds: {judge_s + results['select_jaccard'][0]:.1f}")
    print(f"peak_memory_mib: {max(mb for _, mb in results.values()):.0f}")
    print(f"minhash_total_seconds: {judge_s + results['select_minhash'][0]:.1f}")


if __name__ == "__main__":
    main()
