"""What redistill compares: teacher identities against the record every completed distill writes."""

from __future__ import annotations

import shutil

from flows.redistill import changed_teachers
from mcckd.demo_world.assets import TEACHER_DIR
from mcckd.teachers import TeacherSpec, read_distilled, record_distilled, teacher_identity


def test_a_changed_weight_file_is_a_changed_teacher(tmp_path):
    store, copy = tmp_path / "store", tmp_path / "teacher"
    shutil.copytree(TEACHER_DIR, copy)
    teachers = [TeacherSpec(name="t", model=str(copy)), TeacherSpec(name="u", model=str(TEACHER_DIR))]
    now, changed = changed_teachers(teachers, store)
    assert changed == {"t": None, "u": None}  # never distilled
    record_distilled(store, now)
    assert changed_teachers(teachers, store) == (now, {})
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    after, changed = changed_teachers(teachers, store)
    assert changed == {"t": now["t"]} and after["t"] == teacher_identity(teachers[0]) != now["t"]


def test_recording_some_teachers_keeps_the_others(tmp_path):
    record_distilled(tmp_path, {"a": "1", "b": "2"})
    record_distilled(tmp_path, {"b": "3"})
    assert read_distilled(tmp_path) == {"a": "1", "b": "3"}
    assert read_distilled(tmp_path / "empty") == {}
