"""Run one stage from the command line (what a stage container runs).

    python -m mcckd judge --in samples=my_rationales.parquet --out runs/judged
    python -m mcckd select --in judged=runs/judged --out runs/selected   (a stage folder: its main output)
    python -m mcckd train --settings train.json --in trainset=my_trainset.parquet --out runs/std_cot
    python -m mcckd evaluate --settings '{"model": "m", "model_name": "m"}' --in id=test.parquet --out e

``--settings`` takes JSON text or a JSON file; omitted fields keep their defaults. The output
folder is written atomically; if it is already complete the stage does nothing.

A mistake in the input (a malformed file, a bad setting, a missing input) prints one line naming
the file, row and field and exits with status 2; any other failure prints one line and exits with
status 1. The traceback and library log records go to the stage's log file (``OUT.log`` beside the
output folder, or ``--log``); ``--debug`` prints the traceback on the console as well.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from pydantic import BaseModel, ValidationError

from mcckd.runtime import allocator_in_use, configure_local_runtime, reexec_with_caching_allocator

if sys.argv[1:2] == ["train"]:  # before torch loads: training runs under a caching allocator (mcckd.runtime)
    reexec_with_caching_allocator(["-m", "mcckd", *sys.argv[1:]])
configure_local_runtime()  # before the stages import transformers/vLLM, which read it at import

from data_schemas import InputError, field_errors  # noqa: E402
from mcckd.stages import STAGES, execute  # noqa: E402

log = logging.getLogger("mcckd")


def parse_settings(stage: str, raw: str | None) -> BaseModel:
    """The stage's settings from JSON text or a JSON file; errors name the field."""
    model = STAGES[stage].settings
    if raw is None:
        return model()
    where = "--settings"
    try:
        if raw.lstrip().startswith("{"):
            text = raw
        else:
            where = raw
            text = Path(raw).read_text()
        return model.model_validate(json.loads(text))
    except OSError as e:
        raise InputError(f"{raw}: cannot read the settings file ({e.strerror})") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except ValidationError as e:
        raise InputError(f"{where}: {stage} settings: {'; '.join(field_errors(e))}") from e


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, InputError) else f"{type(error).__name__}: {text}"


def log_to_file(path: Path) -> None:
    """Send log records and Python warnings to the stage's log file, not the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


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
    parser.add_argument("--log", type=Path, help="the stage's log file (default: OUT.log beside the output)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure on the console")
    args = parser.parse_args(argv)
    inputs = {}
    for item in args.inputs:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--in expects NAME=PATH, got {item!r}")
        inputs[name] = Path(path)
    log_path = args.log or args.out.with_name(args.out.name + ".log")
    log_to_file(log_path)
    log.info("stage %s starts (allocator: %s)", args.stage, allocator_in_use())
    try:
        summary = execute(args.stage, parse_settings(args.stage, args.settings), args.out, inputs)
    except Exception as error:
        log.exception("stage %s failed", args.stage)
        if args.debug:
            traceback.print_exc()
        print(f"mcckd {args.stage}: error: {one_line(error)} (log: {log_path})", file=sys.stderr)
        sys.exit(2 if isinstance(error, InputError) else 1)
    log.info("stage %s done: %s", args.stage, summary)
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
