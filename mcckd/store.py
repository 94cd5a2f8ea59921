"""Content-addressed stage folders: a stage's output lives in a folder named by a fingerprint of
everything that determines it, written atomically (temp folder, then rename).

Same fingerprint = same output, so an unchanged re-run recomputes nothing, and a changed input
(a retrained teacher, a new setting) changes the fingerprints of exactly the stages downstream.

Runs may share a store: :func:`stage_lock` lets one run compute a stage folder while another run
that needs the same folder waits, then reuses it (see its docstring for why it is a ``flock``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mcckd.settings import left_out_of_fingerprints

MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of settings (pydantic models, dicts, strings) and upstream fingerprints."""

    def plain(x: Any) -> Any:
        if isinstance(x, BaseModel):
            return {"__model__": type(x).__name__, **x.model_dump(mode="json", exclude=left_out_of_fingerprints(x))}
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
    writer = {"host": socket.gethostname(), "pid": os.getpid(), "parent": os.getppid()}
    record = {**manifest, "seconds": round(time.time() - started, 3), "finished_at": time.time(), "writer": writer}
    (tmp / MANIFEST).write_text(json.dumps(record, indent=2, default=str))
    if out_dir.exists():  # an incomplete leftover from a crashed run of the same fingerprint
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def lock_path(out_dir: Path) -> Path:
    """The lock file of a stage folder: ``<store>/<stage>/.<fingerprint>.lock``, never deleted."""
    return out_dir.parent / f".{out_dir.name}.lock"


# Lock files this process holds (path -> descriptor), and a thread lock per path: see stage_lock.
_HELD: dict[str, int] = {}
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_REGISTRY = threading.Lock()


def _forget_held_locks_in_child() -> None:
    """A forked child (vLLM's engine processes) shares its parent's open lock files; closing its
    copies keeps the lock from outliving the run that took it. The parent's lock stays held."""
    global _REGISTRY
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()
    _THREAD_LOCKS.clear()
    _REGISTRY = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_held_locks_in_child)


def _holder(fd: int) -> dict[str, Any]:
    """What the holder wrote into the lock file (informational: host, pid, since, launch)."""
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    return f"{holder['host']}:{holder['pid']}" if "host" in holder and "pid" in holder else "an unknown process"


def lock_holder(out_dir: Path) -> dict[str, Any] | None:
    """Who holds ``out_dir``'s lock now (host, pid, since, launch), or None when nobody does.

    A probe: it does not wait, and what it says may change the moment it returns.
    """
    path = lock_path(out_dir)
    with _REGISTRY:
        thread_lock = _THREAD_LOCKS.get(str(path))
    if thread_lock is not None and thread_lock.locked():  # a thread of this process; don't touch the file
        return {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def stage_lock(out_dir: Path) -> Iterator[float]:
    """Hold the lock of stage folder ``out_dir`` while the block runs; yield the seconds waited for it.

    Runs that share a store take it around "check complete, compute, rename", so two runs that
    need the same folder compute it once: the second waits, then finds it complete. Folders of
    different fingerprints have different lock files and never wait for each other. While
    waiting, one line on stderr (and in the log) names the stage and the holder's host:pid, which
    the holder writes into the lock file once it has the lock (the content is only informational).

    The lock is an advisory ``flock`` on ``<store>/<stage>/.<fingerprint>.lock``. The kernel
    releases it when the holder's last descriptor closes, however the holder ends: a run killed
    with SIGKILL (or out of memory) leaves no stale lock and the next run proceeds at once, with no
    timeout to guess. On NFS, Linux maps ``flock`` to a whole-file byte-range lock: the client
    releases it when the process dies, and NFSv4's server when the client's lease expires (a
    machine that died: 90 s by default). The file is never deleted: a run that unlinked it could
    let a waiter lock the old inode while a newcomer locks a new one.
    Forked children (vLLM's engine processes) close their copies of the descriptor, so an orphan
    does not keep the lock; a thread lock per path makes threads of one process (Prefect tasks)
    wait for each other without relying on per-descriptor ``flock`` semantics (NFS emulates it
    with per-process locks).

    Why not Prefect's cache isolation with a lock manager: its ``FileSystemLockManager`` writes
    lock files with an expiry, which a killed process leaves behind until the hold timeout has
    passed (forever without one); its ``MemoryLockManager`` serves one process; and either covers
    only Prefect task runs, while stages also run from the CLI (``python -m mcckd``), containers
    and tests, all through ``mcckd.stages.execute``, which takes this lock. Nor the ``filelock``
    package (only a transitive dependency): it polls rather than blocks, and where ``flock`` is
    missing it falls back to an existence file, which a killed holder leaves behind.
    """
    path = lock_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path)
    with _REGISTRY:
        thread_lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
    started = time.monotonic()
    announced = False

    def announce(holder: dict[str, Any]) -> None:
        line = f"waiting for stage {out_dir.parent.name} {out_dir.name} (held by {_describe(holder)})"
        log.info(line)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    if not thread_lock.acquire(blocking=False):
        announce({"host": socket.gethostname(), "pid": os.getpid()})
        announced = True
        thread_lock.acquire()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not announced:
                    announce(_holder(fd))
                fcntl.flock(fd, fcntl.LOCK_EX)
            with _REGISTRY:
                _HELD[key] = fd
            me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
            me["launch"] = os.environ.get("TORCHELASTIC_RUN_ID")  # what the other ranks wait for
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            yield time.monotonic() - started
        finally:
            with _REGISTRY:
                _HELD.pop(key, None)
            os.close(fd)  # releases the flock
    finally:
        thread_lock.release()


def wait_for_launch_leader(out_dir: Path, poll_s: float = 0.5) -> bool:
    """For ranks > 0 under ``torchrun``, which take no lock: wait until rank 0 of this launch holds
    ``out_dir``'s lock (True: compute along with it) or the folder is complete (False: another run
    computed it while rank 0 waited, and rank 0 reuses it). Without a launch id, True at once."""
    launch = os.environ.get("TORCHELASTIC_RUN_ID")
    if not launch:
        return True
    path = lock_path(out_dir)
    while not is_complete(out_dir):
        try:  # read, not locked: rank 0 writes its launch id only once it holds the lock
            holder = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if holder.get("launch") == launch:
            return True
        time.sleep(poll_s)
    return False


def write_progress(path: Path, done: int, total: int, **extra: Any) -> None:
    """A resumable stage's ``progress.json`` (the Prefect task turns it into a progress artifact)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"done": done, "total": total, **extra}))
    os.replace(tmp, path)
