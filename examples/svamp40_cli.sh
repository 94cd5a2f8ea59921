#!/usr/bin/env bash
# SmolLM2-135M-Instruct, chat template, 40 recorded SVAMP questions, stage by stage through the CLI:
# import -> judge -> select -> materialize -> train (Std-CoT) -> evaluate (untrained and trained).
#   bash examples/svamp40_cli.sh [OUT]     (about 10 minutes on 2 AVX-512 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/svamp40}
PY=${PY:-.venv/bin/python}
SVAMP=../shared/data/mcckd/SVAMP
stage() { $PY -m mcckd "$@"; }
stage import --settings '{"max_questions": 40}' --in recorded=$SVAMP/train.json --out $OUT/import
stage judge --in samples=$OUT/import --out $OUT/judge  # a stage folder: its main output
stage select --settings '{"k": 3}' --in judged=$OUT/judge --out $OUT/select
stage materialize --in selected=$OUT/select --out $OUT/materialize
stage train --settings '{"base_model": "SmolLM2-135M-Instruct",
  "loop": {"epochs": 3, "questions_per_batch": 4, "learning_rate": 5e-5, "max_length": 512,
           "precision": "'"${PRECISION:-bf16}"'", "checkpoint_every": 10}}' \
  --in trainset=$OUT/materialize --out $OUT/std_cot
EVAL='"max_questions": 40, "max_tokens": 256, "vllm": {"kv_cache_gib": 1.0}'
stage evaluate --settings '{"model": "SmolLM2-135M-Instruct", "model_name": "untrained", '"$EVAL"'}' \
  --in svamp_dev=$SVAMP/dev.json --out $OUT/eval_untrained
stage evaluate --settings '{"model": "'$OUT'/std_cot/model", "model_name": "std_cot", '"$EVAL"'}' \
  --in svamp_dev=$SVAMP/dev.json --out $OUT/eval_std_cot
