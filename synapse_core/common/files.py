"""Small files that survive a crash and a concurrent writer: atomic replace, append, and a lock.

A write goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
the old file with os.replace (atomic on POSIX and Windows), so a reader sees the old list or the
new one, never half of either. Read-modify-write cycles hold an exclusive lock on a sibling `.lock`
file (filelock's native lock: flock on POSIX, msvcrt on Windows), so two processes adding at once
lose nothing.

SYNAPSE_PAUSE_BEFORE_REPLACE (tests only): a path; a write creates that file after its temporary
file is complete and then sleeps, so a test can kill the process at exactly that point.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from .errors import StoreError

PAUSE_ENV = "SYNAPSE_PAUSE_BEFORE_REPLACE"


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash at any point leaves the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        pause = os.environ.get(PAUSE_ENV)
        if pause:
            Path(pause).write_text(tmp)
            while True:  # wait here to be killed
                time.sleep(60)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, payload) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")


def read_json(path: Path, default):
    """The file's JSON, `default` when absent; StoreError (naming the file) when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StoreError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line and fsync it (callers hold the lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_lines(path: Path) -> list[dict]:
    """Every JSON line of an append-only log; a torn last line (crash mid-append) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (created if needed) across processes and threads.

    The lock file is kept on release (deleting it would let a waiter and a newcomer lock two
    different files of one name), and never silently downgraded to a soft lock.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path, preserve_lock_file=True, fallback_to_soft=False):
        yield
