"""What moves ``ood_steps`` (four events, after distillation on two or three): gold rationales in
several layouts, each distilled into the committed student base with the demo's loop (Std-CoT,
600 questions, 20 epochs) and evaluated greedily with vLLM on the demo's splits. A seed draws the
training seed and where the distractors fall; the questions and test sets stay the same.

    python benchmarks/ood_steps.py                  # every layout, seed 0, two at a time (~25 min here)
    python benchmarks/ood_steps.py --layouts walk-distractors-2 --seeds 0 1 2

A finished (layout, seed) is kept under ``runs/benchmarks/ood_steps`` and not run again.

Layouts (the rationales are the world's generator's, so no teacher error is in the way):

- ``styles``: plain-2 and subq-2, what the demo teacher is asked for.
- ``quote``: each event sentence quoted, then its equation ("Ana sells 3 pens: 24 - 3 = 21.").
- ``reduce``: after each step the problem is restated with the events left ("24 - 3 = 21. Ana has
  21 pens. <the events left>"), so every step solves the first event of a shorter problem.
- ``skip-distractors``: 0-2 irrelevant sentences ("It is a sunny day.") anywhere among the events,
  rationales as in ``styles``, so "the second sentence" or "the last sentence" no longer names an
  event.
- ``walk-distractors-2`` and ``-3``: 0-2 or 0-3 irrelevant sentences, and a rationale that walks
  every sentence, the irrelevant ones included ("It is a sunny day: still 58."), so that distillation
  sees walks of up to 5 or 6 sentences.
- ``walk-distractors-3-eq``: as ``-3``, but an irrelevant sentence gets an identity equation ("It is
  a sunny day: 58 + 0 = 58."), so distillation also sees up to 6 equations.
- ``world``: the demo world as it is, ``id`` problems with their asides and two plain-2 rationales
  from its generator (which walk them), tested on the world's own test sets: what the demo's
  students would reach with a perfect teacher.

Every other layout draws its problems without the world's asides, as they were measured.

Distractor layouts are evaluated on the plain test questions and on the same problems with
distractors drawn as in training (``<split>_d``). Prints every run's accuracies, then
``ood_steps_<layout>: mean [per seed]`` and ``four_step_rationales_<layout>`` lines last.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mcckd.demo_world.problems import ASIDES
from mcckd.paths import PROJECT_ROOT
from mcckd.stages import output

OUT = PROJECT_ROOT / "runs" / "benchmarks" / "ood_steps"
STEP = re.compile(r"\d+ [+-] (\d+) = \d+")
N_TRAIN, N_TEST, SEED = 600, 200, 0
# layout -> most distractors per question (None: none, and no "_d" test sets)
LAYOUTS: dict[str, int | None] = {
    "styles": None,
    "quote": None,
    "reduce": None,
    "skip-distractors": 2,
    "walk-distractors-2": 2,
    "walk-distractors-3": 3,
    "walk-distractors-3-eq": 3,
    "world": None,
}


def run_dir(layout: str, seed: int) -> Path:
    return OUT / layout / f"seed-{seed}"


def layout_rows(layout: str, seed: int) -> tuple[list[dict], dict[str, list[dict]]]:
    """Training rows (two gold rationales per question) and test rows per split for ``layout``."""
    from dataclasses import replace

    from mcckd.demo_world.problems import SPLITS, Problem, answer_sentence, equation, generate_split, write_rationale
    from mcckd.stages.materialize import with_answer_sentence

    rng, test_rng = random.Random(seed), random.Random(SEED + 1)
    most = LAYOUTS[layout]
    specs = {split: spec if layout == "world" else replace(spec, asides=0) for split, spec in SPLITS.items()}

    def sentences(p: Problem, r: random.Random, n_distractors: int) -> list[tuple[int | None, str]]:
        """(event index or None for a distractor, sentence) after the start sentence."""
        seq = p.told
        for _ in range(r.randint(0, n_distractors)):
            seq.insert(r.randint(0, len(seq)), (None, r.choice(ASIDES).format(name=p.name, item=p.item)))
        return seq

    def question(p: Problem, seq: list[tuple[int | None, str]]) -> str:
        return " ".join([p.sentences[0], *(s for _, s in seq), p.sentences[-1]])

    def walk(p: Problem, seq: list[tuple[int | None, str]], r: random.Random, join: str) -> str:
        lines, value = [p.sentences[0]], p.start
        for i, s in seq:
            if i is None:
                lines.append(
                    f"{s[:-1]}{join}{value} + 0 = {value}."
                    if layout.endswith("-eq")
                    else f"{s[:-1]}{join}still {value}."
                )
            else:
                value = p.steps[i][3]
                lines.append(f"{s[:-1]}{join}{equation(r, *p.steps[i])}.")
        return " ".join([*lines, answer_sentence(p.answer)])

    def reduce(p: Problem, seq: list[tuple[int | None, str]], r: random.Random) -> str:
        lines = []
        for k, step in enumerate(p.steps):
            lines.append(f"{equation(r, *step)}. {p.name} has {step[3]} {p.item}.")
            lines += [s for _, s in seq[k + 1 :]]
        return " ".join([*lines, answer_sentence(p.answer)])

    def rationales(p: Problem, seq: list[tuple[int | None, str]], r: random.Random) -> list[str]:
        if layout == "reduce":
            return [reduce(p, seq, r), reduce(p, seq, r)]
        if layout == "quote" or layout.startswith("walk-"):
            return [walk(p, seq, r, ": "), walk(p, seq, r, ", so ")]
        if layout == "world":
            return [write_rationale(p, "plain", 2, r), write_rationale(p, "plain", 2, r)]
        return [write_rationale(p, "plain", 2, r), write_rationale(p, "subq", 2, r)]

    train = []
    for i, p in enumerate(generate_split("id", N_TEST + N_TRAIN, SEED, specs["id"])[N_TEST:]):
        seq = sentences(p, rng, most or 0)
        answer = str(p.answer)
        texts, spans = [], []
        for text in rationales(p, seq, rng):
            text, (start, end), _ = with_answer_sentence(text, answer)
            texts.append(text)
            spans.append({"start": start, "end": end})
        train.append(
            dict(
                question_id=f"train-{i}",
                question=question(p, seq),
                answer=answer,
                rationales=texts,
                answer_spans=spans,
                teachers=["gold"] * len(texts),
                sample_indices=list(range(len(texts))),
            )
        )
    tests: dict[str, list[dict]] = {}
    for split in SPLITS:
        problems = generate_split(split, N_TEST + (N_TRAIN if split == "id" else 0), SEED, specs[split])[:N_TEST]
        for suffix, n in [("", 0)] + ([("_d", most)] if most else []):
            tests[split + suffix] = [
                dict(
                    question_id=f"{split}{suffix}-{i}",
                    question=question(p, sentences(p, test_rng, n)),
                    answer=str(p.answer),
                )
                for i, p in enumerate(problems)
            ]
    return train, tests


def run_layout(layout: str, seed: int) -> dict:
    """Materialise, distil and evaluate one layout (in a child process pinned to one core)."""
    from data_schemas import QUESTIONS, TRAINSET, write_table
    from mcckd.demo_world.assets import STUDENT_BASE_DIR
    from mcckd.generation import VllmSettings
    from mcckd.stages import STAGES, execute
    from mcckd.training.config import TrainConfig

    out = run_dir(layout, seed)
    train, tests = layout_rows(layout, seed)
    trainset = write_table(train, out / "questions.parquet", TRAINSET)
    test_files = {split: write_table(rows, out / f"test_{split}.parquet", QUESTIONS) for split, rows in tests.items()}
    loop = TrainConfig(epochs=20, questions_per_batch=16, learning_rate=2e-3, dev_fraction=0.05, alpha=0.0, seed=seed)
    started = time.perf_counter()
    execute(
        "train", STAGES["train"].settings(base_model=STUDENT_BASE_DIR, loop=loop), out / "train", {"trainset": trainset}
    )
    train_s = time.perf_counter() - started
    settings = STAGES["evaluate"].settings(
        model=output("train", out / "train"), model_name=layout, vllm=VllmSettings(kv_cache_gib=0.5)
    )
    summary = execute("evaluate", settings, out / "evaluate", test_files)
    result = {
        "layout": layout,
        "seed": seed,
        "train_s": round(train_s),
        "example": train[0],
        "accuracy": summary["accuracy"],
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def four_step_rationales(run: Path) -> int:
    """How many ``ood_steps`` rationales do four steps (equations that change the amount): a student
    that has learnt to walk the events writes four however its arithmetic goes."""
    import pandas as pd

    predictions = pd.read_parquet(output("evaluate", run / "evaluate", "predictions"))
    rationales = predictions.loc[predictions["split"] == "ood_steps", "generation"]
    return sum(len([m for m in STEP.finditer(text) if m.group(1) != "0"]) == 4 for text in rationales)


def child(layout: str, seed: int, cores: queue.Queue) -> dict:
    """One (layout, seed) in its own process on a free core, one thread, as the demo runs its trainings."""
    result = run_dir(layout, seed) / "result.json"
    if result.is_file():
        return json.loads(result.read_text())
    core = cores.get()
    try:
        log = run_dir(layout, seed).with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["taskset", "-c", str(core), sys.executable, __file__, "--child", layout, str(seed)]
        with log.open("w") as handle:
            env = dict(os.environ, OMP_NUM_THREADS="1")
            subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True)
    finally:
        cores.put(core)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[SEED])
    parser.add_argument("--child", nargs=2, metavar=("LAYOUT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from mcckd.runtime import configure_local_runtime

        configure_local_runtime()
        run_layout(args.child[0], int(args.child[1]))
        return
    cores: queue.Queue = queue.Queue()
    for core in sorted(os.sched_getaffinity(0)):
        cores.put(core)
    runs = [(layout, seed) for layout in args.layouts for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=cores.qsize()) as pool:
        results = list(pool.map(lambda run: child(*run, cores), runs))
    for r in results:
        print(f"{r['layout']} seed {r['seed']} ({r['train_s']} s training): {json.dumps(r['accuracy'])}")
        r["four_steps"] = four_step_rationales(run_dir(r["layout"], r["seed"]))
        print(f"  ood_steps rationales with four steps: {r['four_steps']} of {N_TEST}")
    for r in results[:: len(args.seeds)]:
        print(f"  {r['layout']}, e.g.: {r['example']['question']} -> {r['example']['rationales'][0]}")
    for layout in args.layouts:
        scores = [r["accuracy"]["ood_steps"] for r in results if r["layout"] == layout]
        print(f"ood_steps_{layout}: {statistics.mean(scores):.3f} [{' '.join(f'{x:.3f}' for x in scores)}]")
        counts = [r["four_steps"] for r in results if r["layout"] == layout]
        print(f"four_step_rationales_{layout}: {statistics.mean(counts):.1f} [{' '.join(map(str, counts))}]")


if __name__ == "__main__":
    main()
