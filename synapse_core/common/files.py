"""Small files that survive a crash and a concurrent writer: atomic replace, append, and a lock.

A write goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
the old file with os.replace (atomic on POSIX and Windows), so a reader sees the old list or the
new one, never half of either. Read-modify-write cycles hold an exclusive lock on a sibling `.lock`
file (filelock's native lock: flock on POSIX, msvcrt on Windows), so two processes adding at once
lose nothing.

A change that touches several files (a quarantine: the list, its audit record, its outbox entry)
is first written whole to an intent file (write-ahead), then applied, then the intent is deleted;
`recover` completes an intent a crash left behind, so a change is all there or not there at all.
An append repairs a torn last line (a crash mid-append) before it writes.

SYNAPSE_PAUSE_BEFORE_REPLACE (tests only): a path; a write creates that file after its temporary
file is complete and then sleeps, so a test can kill the process at exactly that point.
SYNAPSE_PAUSE_ON (tests only): pause only before replacing a file whose name ends with this.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import StoreError

PAUSE_ENV = "SYNAPSE_PAUSE_BEFORE_REPLACE"
PAUSE_ON_ENV = "SYNAPSE_PAUSE_ON"
LOCK_TIMEOUT_S = 60.0  # nothing holds a lock across the network, so a longer wait means a stuck process


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
        if pause and path.name.endswith(os.environ.get(PAUSE_ON_ENV, "")):
            Path(pause).write_text(tmp)
            while True:  # wait here to be killed
                time.sleep(60)
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(path.parent)


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def atomic_write_json(path: Path, payload) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")


def read_json(path: Path, default):
    """The file's JSON, `default` when absent; StoreError (naming the file) when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except UnicodeDecodeError as exc:
        raise StoreError(f"{path} is not UTF-8 text (byte {exc.start}); fix or remove it") from None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StoreError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc


def _repair_torn_tail(fh) -> None:
    """Cut a last line that has no newline (a crash mid-append) so the next record starts clean."""
    size = fh.seek(0, os.SEEK_END)
    if size == 0:
        return
    fh.seek(size - 1)
    if fh.read(1) == b"\n":
        return
    fh.seek(0)
    data = fh.read()
    fh.truncate(data.rfind(b"\n") + 1)
    fh.seek(0, os.SEEK_END)


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line and fsync it, repairing a torn last line first (callers hold the lock)."""
    append_lines(path, [record])


def append_lines(path: Path, records: list[dict]) -> None:
    if not records:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as fh:
            _repair_torn_tail(fh)
            fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise StoreError(f"cannot append to {path}: {exc.strerror or exc}") from exc


def read_lines(path: Path) -> list[dict]:
    """Every JSON line of an append-only log, oldest first.

    A torn last line (no newline: a crash mid-append, repaired by the next append) is left out; a
    damaged line anywhere else is a StoreError naming its line number, never silently skipped.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn record
    out, bad = [], []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is a ValueError too
            bad.append(number)
            continue
        if isinstance(record, dict):
            out.append(record)
        else:
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise StoreError(f"{path}: line(s) {shown} of {len(lines)} are damaged (not a JSON record); "
                         "the other records are intact: repair or remove those lines")
    return out


def _has_line_with(path: Path, key: str, value: str) -> bool:
    """Whether a complete line of the log holds `"key": "value"` (damaged lines tolerated)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    needle = json.dumps({key: value})[1:-1].encode()
    return any(needle in line for line in data.split(b"\n")[:-1])


# ---- write-ahead changes of several files ----------------------------------------------------


def commit(intent: Path, writes: Mapping[Path, str], appends: Mapping[Path, list[dict]]) -> None:
    """Replace files and append log records as one change (callers hold the lock).

    Every appended record carries an "id"; the intent file is written first and removed last, so a
    crash at any point leaves either nothing done or an intent that `recover` completes."""
    if not writes and not appends:
        return

    def name(path: Path) -> str:  # files beside the intent by name: the folder may move or be reached otherwise
        return path.name if Path(path).parent == intent.parent else str(path)

    writes = {name(p): t for p, t in writes.items()}
    appends = {name(p): list(r) for p, r in appends.items()}
    atomic_write_json(intent, {"writes": writes, "appends": appends})
    _apply(intent, writes, appends, fresh=True)


def _apply(intent: Path, writes: dict, appends: dict, fresh: bool) -> None:
    for path, text in writes.items():
        atomic_write_text(intent.parent / path, text)
    for path, records in appends.items():
        todo = records if fresh else [r for r in records if not _has_line_with(intent.parent / path, "id", r["id"])]
        append_lines(intent.parent / path, todo)
    try:
        intent.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot remove {intent}: {exc.strerror or exc}") from exc
    _fsync_dir(intent.parent)


def recover(intent: Path) -> bool:
    """Complete a change a crash left half done (callers hold the lock). True when there was one."""
    data = read_json(intent, None)
    if data is None:
        return False
    try:
        writes, appends = dict(data["writes"]), dict(data["appends"])
        if not all(isinstance(t, str) for t in writes.values()) or not all(
                isinstance(r, dict) and isinstance(r.get("id"), str) for rs in appends.values() for r in rs):
            raise TypeError("unexpected entries")
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{intent} is not a Synapse change record ({exc}); fix or remove it") from exc
    _apply(intent, writes, appends, fresh=False)
    return True


# ---- locks -------------------------------------------------------------------------------------


class _ProcessLock:
    """One file lock per path in this process, re-entrant within a thread, exclusive across threads."""

    def __init__(self, path: Path):
        self.path = path
        self.thread = threading.RLock()
        self.file = FileLock(path, timeout=LOCK_TIMEOUT_S, thread_local=False, preserve_lock_file=True,
                             fallback_to_soft=False)
        self.depth = 0


_LOCKS: dict[str, _ProcessLock] = {}
_LOCKS_GUARD = threading.Lock()


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (created if needed) across processes and threads.

    Re-entrant: a thread already holding it (a change and its outbox entry under one lock) goes on.
    The lock file is kept on release (deleting it would let a waiter and a newcomer lock two
    different files of one name), and never silently downgraded to a soft lock.
    """
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {lock_path.parent}: {exc.strerror or exc}") from exc
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(str(lock_path.absolute()), _ProcessLock(lock_path))
    with lock.thread:
        if lock.depth == 0:
            try:
                lock.file.acquire()
            except Timeout:
                raise StoreError(f"{lock_path} stayed locked for {LOCK_TIMEOUT_S:.0f} s: another Synapse process "
                                 "is stuck; stop it and try again") from None
            except OSError as exc:
                raise StoreError(f"cannot lock {lock_path}: {exc.strerror or exc} (it must be a plain file: "
                                 "remove whatever is there)") from exc
        lock.depth += 1
        try:
            yield
        finally:
            lock.depth -= 1
            if lock.depth == 0:
                lock.file.release()
