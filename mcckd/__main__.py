"""Run one stage from the command line (what a stage container runs).

    python -m mcckd judge --in samples=runs/x/samples.parquet --out runs/judged
    python -m mcckd train --settings train.json --in trainset=train.parquet --out runs/std_cot
    python -m mcckd evaluate --settings '{"model": "m", "model_name": "m"}' --in id=test.parquet --out e

``--settings`` takes JSON text or a JSON file; omitted fields keep their defaults. The output
folder is written atomically; if it is already complete the stage does nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mcckd.runtime import configure_local_runtime

configure_local_runtime()  # before the stages import transformers/vLLM, which read it at import

from mcckd.stages import STAGES, execute  # noqa: E402


def parse_settings(stage: str, raw: str | None):
    model = STAGES[stage].settings
    if raw is None:
        return model()
    text = Path(raw).read_text() if not raw.lstrip().startswith("{") else raw
    return model.model_validate(json.loads(text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mcckd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--out", type=Path, required=True, help="the stage's output folder")
    parser.add_argument("--settings", help="JSON text or a JSON file with the stage's settings")
    parser.add_argument(
        "--in", dest="inputs", action="append", default=[], metavar="NAME=PATH", help="an input; repeat"
    )
    args = parser.parse_args(argv)
    inputs = {}
    for item in args.inputs:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--in expects NAME=PATH, got {item!r}")
        inputs[name] = Path(path)
    summary = execute(args.stage, parse_settings(args.stage, args.settings), args.out, inputs)
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
