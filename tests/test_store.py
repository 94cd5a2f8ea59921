"""Content identity of inputs: what the stage fingerprints trust to tell a changed model from the same one."""

from __future__ import annotations

import shutil

from mcckd.store import path_fingerprint


def test_fingerprints_follow_content_not_place_and_see_edits_in_place(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "weights.bin").write_bytes(b"\x00" * 4096)
    (a / "config.json").write_text("{}")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    first = path_fingerprint(a)
    assert path_fingerprint(b) == first == path_fingerprint(a)  # the second call is remembered
    (a / "weights.bin").write_bytes(b"\x00" * 4095 + b"\x01")  # same size, one byte changed
    edited = path_fingerprint(a)
    assert edited != first
    (a / "extra.txt").write_text("x")
    assert path_fingerprint(a) not in {first, edited}
    assert path_fingerprint(a / "config.json") == path_fingerprint(b / "config.json")
