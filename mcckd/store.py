"""Content-addressed stage folders: a stage's output lives in a folder named by a fingerprint of
everything that determines it, written atomically (temp folder, then rename).

Same fingerprint = same output, so an unchanged re-run recomputes nothing, and a changed input
(a retrained teacher, a new setting) changes the fingerprints of exactly the stages downstream.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

MANIFEST = "manifest.json"


def fingerprint(*parts: Any) -> str:
    """A short stable hash of settings (pydantic models, dicts, strings) and upstream fingerprints."""

    def plain(x: Any) -> Any:
        if isinstance(x, BaseModel):
            return {"__model__": type(x).__name__, **x.model_dump(mode="json")}
        if isinstance(x, Path):
            return str(x)
        return x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=plain)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# (path, listing of (name, size, mtime)) -> content hash: a sweep fingerprints the same base model
# for every (cell, method, seed), and reading GBs of weights each time would dominate its planning.
_CONTENT_HASHES: dict[tuple, str] = {}


def path_fingerprint(path: Path) -> str:
    """Hash of a file's or folder's bytes (model weights, question files): identity by content.

    Remembered in this process while no file's size or modification time changes.
    """
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"nothing to fingerprint at {path}")
    names = [str(f.relative_to(path)) if path.is_dir() else f.name for f in files]
    stats = [f.stat() for f in files]
    key = (str(path.resolve()), tuple((n, st.st_size, st.st_mtime_ns) for n, st in zip(names, stats, strict=True)))
    if key not in _CONTENT_HASHES:
        h = hashlib.sha256()
        for name, f in zip(names, files, strict=True):
            h.update(name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(chunk)
        _CONTENT_HASHES[key] = h.hexdigest()[:16]
    return _CONTENT_HASHES[key]


def stage_dir(store: Path, stage: str, fp: str) -> Path:
    return store / stage / fp


def is_complete(out_dir: Path) -> bool:
    """A stage folder counts only once its manifest exists (written last, inside the rename)."""
    return (out_dir / MANIFEST).is_file()


def read_manifest(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / MANIFEST).read_text())


@contextmanager
def atomic_stage_dir(out_dir: Path, manifest: dict[str, Any]) -> Iterator[Path]:
    """Yield a temp folder to write into; on success it becomes ``out_dir`` with a manifest.

    On failure the temp folder stays for inspection (named ``.tmp-*``) and ``out_dir`` is untouched.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    started = time.time()
    yield tmp
    record = {**manifest, "seconds": round(time.time() - started, 3), "finished_at": time.time()}
    (tmp / MANIFEST).write_text(json.dumps(record, indent=2, default=str))
    if out_dir.exists():  # an incomplete leftover from a crashed run of the same fingerprint
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def write_progress(path: Path, done: int, total: int, **extra: Any) -> None:
    """A resumable stage's ``progress.json`` (the Prefect task turns it into a progress artifact)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"done": done, "total": total, **extra}))
    os.replace(tmp, path)
