"""What a person reads: the report as a UI artifact, and which method the others are compared with."""

from __future__ import annotations

import base64

import pytest

from flows.demo import DemoSettings, demo_config
from mcckd.report import inline_images


def test_the_reports_images_travel_inside_its_markdown(tmp_path):
    png = b"\x89PNG\r\n\x1a\n tiny"
    (tmp_path / "accuracy.png").write_bytes(png)
    text = "# r\n\n![accuracy](accuracy.png)\n\n![gap](teacher_gap.png)\n\n![web](https://x/y.png)\n"
    out = inline_images(text, tmp_path)
    assert f"![accuracy](data:image/png;base64,{base64.b64encode(png).decode()})" in out
    assert "![gap](teacher_gap.png)" in out and "![web](https://x/y.png)" in out  # missing or remote: as written


def test_the_baseline_is_the_method_without_consistency_whatever_the_order(tmp_path):
    config = demo_config(DemoSettings(), tmp_path, tmp_path, tmp_path)
    assert config.baseline_method == "std_cot"
    reordered = config.model_validate(config.model_dump() | {"students": dict(reversed(config.students.items()))})
    assert list(reordered.students) == ["mcc_kd", "std_cot"] and reordered.baseline_method == "std_cot"
    assert config.model_copy(update={"baseline": "mcc_kd"}).baseline_method == "mcc_kd"
    with pytest.raises(ValueError, match="baseline 'nope' is not a student method"):
        config.model_validate(config.model_dump() | {"baseline": "nope"})
