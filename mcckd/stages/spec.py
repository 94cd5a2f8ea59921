"""What a stage declaration is: its name, settings, code version, inputs and outputs.

Each stage module declares ``STAGE = StageSpec(...)`` once, beside its settings model; everything
else (the registry in ``mcckd.stages``, the Prefect tasks, the flows' plan, the readers of its
files) asks that declaration where the stage's files are. Outputs several stages write (the
rejection ledger, samples, selected rationales) are declared here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel

from data_schemas import REJECTIONS, SAMPLES, SELECTED, write_table


@dataclass(frozen=True)
class Output:
    """One file (or folder) a stage writes into its output folder; Parquet ones with their schema."""

    file: str
    schema: pa.Schema | None = None  # None: not Parquet (a model folder, JSON, a plot)
    description: str = ""
    optional: bool = False  # written only under some settings (train's checkpoints: loop.keep_epochs)


# Outputs that more than one stage writes, under the same name and schema.
SAMPLES_FILE = Output("samples.parquet", SAMPLES, "every rationale with its question and provenance")
SELECTED_FILE = Output("selected.parquet", SELECTED, "the rationales kept for training")
LEDGER = Output("rejections.parquet", REJECTIONS, "every rationale this stage rejected, and why")


@dataclass(frozen=True)
class StageSpec:
    """A stage, declared once.

    ``outputs``' first entry is the stage's main output: the file the next stage reads. A stage with
    ``test_sets`` takes every test set of the run as further inputs, named by the run.
    """

    name: str
    settings: type[BaseModel]
    version: int  # bump when the stage's output for the same inputs changes (it is in the fingerprint)
    inputs: tuple[str, ...]  # required inputs
    outputs: dict[str, Output]
    optional_inputs: tuple[str, ...] = ()
    # Inputs that are the user's files (questions, recorded rationales), not another stage's output;
    # every other input is named after the stage output it reads (a test holds the stages to it).
    user_files: tuple[str, ...] = ()
    test_sets: bool = False  # takes the run's test sets as inputs too (decontaminate, evaluate)
    evaluations: bool = False  # takes one evaluation's predictions per checkpoint, named by it (choose)
    uses_accelerator: bool = False  # runs in its own process, so GPU memory is returned when it ends
    resumable: bool = False  # ``run`` takes a ``work_dir`` that outlives a killed run
    retries: int = 0  # Prefect task retries (sampling and evaluation hit flaky engines and servers)
    description: str = field(default="", compare=False)

    @property
    def main(self) -> str:
        return next(iter(self.outputs))

    def path(self, out_dir: Path, output: str | None = None) -> Path:
        """Where ``output`` (default: the main one) of the stage folder ``out_dir`` is."""
        return Path(out_dir) / self.outputs[output or self.main].file

    def write(self, out_dir: Path, output: str, rows: pa.Table | list[dict]) -> Path:
        """Write a Parquet output under its declared name, checked against its declared schema."""
        declared = self.outputs[output]
        if declared.schema is None:
            raise TypeError(f"output {output!r} of stage {self.name!r} is not Parquet")
        return write_table(rows, self.path(out_dir, output), declared.schema)
