"""The stage declarations (``STAGE`` in each module of ``mcckd/stages``) are the one place a stage's
wiring is stated: every input is some stage's output (or a user's file), the Prefect tasks are derived
from them, and what a stage writes is exactly what it declares, with the declared schemas.

``check_declared_outputs`` is also run on the folders of the real flow in ``tests/test_flow.py``
(sample, judge, select, decontaminate, materialize, train, evaluate); here on the import stage.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel

from mcckd.paths import PROJECT_ROOT
from mcckd.stages import STAGES, execute, output
from mcckd.stages.import_recorded import ImportSettings
from mcckd.stages.judge import JudgeSettings
from mcckd.store import MANIFEST, read_manifest
from tasks.stages import TASKS


def test_every_input_is_some_stages_output_or_a_users_file():
    outputs = {name: spec for spec in STAGES.values() for name in spec.outputs}
    for spec in STAGES.values():
        assert issubclass(spec.settings, BaseModel) and spec.version >= 1 and spec.outputs, spec.name
        for name in (*spec.inputs, *spec.optional_inputs):
            assert name in spec.user_files or name in outputs, f"{spec.name}: input {name!r} is nobody's output"
        assert set(spec.user_files) <= {*spec.inputs, *spec.optional_inputs}, spec.name


def test_an_input_reads_the_file_its_producer_declares_as_main():
    """A consumer gets the producer's main output: the producers of each input name agree on it. An
    input named after another output (choose reads train's ``checkpoints``) has exactly one producer:
    the plan passes that output (``flows.plan.output_ref``)."""
    for spec in STAGES.values():
        for name in spec.inputs:
            if name in spec.user_files:
                continue
            producers = [p for p in STAGES.values() if name in p.outputs]
            mains = [p.main == name for p in producers]
            assert all(mains) or (len(producers) == 1 and not any(mains)), (
                spec.name,
                name,
                [p.name for p in producers],
            )


def test_the_tasks_are_derived_from_the_declarations():
    assert list(TASKS) == list(STAGES)
    for name, task in TASKS.items():
        assert task.name == name and task.retries == STAGES[name].retries


def test_a_stage_output_file_name_is_written_only_in_the_declarations():
    """No module but the declarations spells a stage's output file name (readers ask ``output``)."""
    # File names (the train stage's "model" folder is too common a word to search for: its readers are
    # found by the flow test instead, which reads the model through the declaration).
    names = {o.file for spec in STAGES.values() for o in spec.outputs.values() if "." in o.file}
    declarations = {PROJECT_ROOT / "mcckd" / "stages" / f"{m}.py" for m in ("spec", *_stage_modules())}
    offenders = []
    for folder in ("mcckd", "flows", "tasks", "data_schemas", "benchmarks"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            if path in declarations:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    hits = [n for n in names if n in node.value.split() or node.value == n or f"/{n}" in node.value]
                    offenders += [f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: {h}" for h in hits]
    # The demo world's generated question file is an input of the sample stage, not a stage's output.
    offenders = [o for o in offenders if not o.startswith("mcckd/demo_world/problems.py")]
    assert not offenders, offenders


def _stage_modules() -> list[str]:
    return [path.stem for path in (PROJECT_ROOT / "mcckd" / "stages").glob("*.py") if path.stem != "__init__"]


def check_declared_outputs(out_dir: Path) -> None:
    """A complete stage folder holds exactly its declared outputs (and the manifest), optional ones
    where its settings asked for them; each Parquet output has its declared schema."""
    stage = read_manifest(out_dir)["stage"]
    spec = STAGES[stage]
    present = {p.name for p in out_dir.iterdir()} - {MANIFEST}
    required = {o.file for o in spec.outputs.values() if not o.optional}
    assert required <= present <= {o.file for o in spec.outputs.values()}, (stage, out_dir, present)
    for name, declared in spec.outputs.items():
        path = spec.path(out_dir, name)
        if declared.optional and not path.exists():
            continue
        if declared.schema is not None:
            assert pq.read_schema(path).remove_metadata().equals(declared.schema), (stage, name)
        elif declared.file.endswith(".json"):
            json.loads(path.read_text())


def test_the_import_stage_writes_what_it_declares(tmp_path):
    recorded = tmp_path / "recorded.json"
    recorded.write_text(
        json.dumps(
            [
                {"instruction": "Ann has 2 pens and buys 3. How many?", "output": ["2 + 3 = 5. The answer is 5."]},
                {"instruction": "Bo has 4 cups and breaks one. How many?", "output": [""], "label": "3"},
            ]
        )
    )
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"question": "Ann has 2 pens and buys 3. How many?", "answer": "5"}]))
    execute("import", ImportSettings(), tmp_path / "import", {"recorded": recorded, "labels": labels})
    check_declared_outputs(tmp_path / "import")


def test_a_stage_folder_given_as_input_means_its_main_output(tmp_path):
    """``--in samples=runs/import``: the CLI and containers pass folders, not file names."""
    recorded = tmp_path / "recorded.json"
    recorded.write_text(
        json.dumps([{"instruction": "2 + 3?", "output": ["2 + 3 = 5. The answer is 5."], "label": "5"}])
    )
    execute("import", ImportSettings(), tmp_path / "import", {"recorded": recorded})
    summary = execute("judge", JudgeSettings(), tmp_path / "judge", {"samples": tmp_path / "import"})
    assert summary["correct"] == 1
    assert read_manifest(tmp_path / "judge")["inputs"]["samples"] == str(output("import", tmp_path / "import"))
    check_declared_outputs(tmp_path / "judge")
