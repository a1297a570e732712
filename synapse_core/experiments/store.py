"""A disk cache of results under $SYNAPSE_HOME/results, keyed by a content hash of the request.

Keys are sha256 of canonical JSON (sorted keys) and the engine's version, so the same request to
the same engine always maps to the same key, and any change in model, weights, prompt, settings,
masks or engine maps to another. Each entry records the engine that made it: one made by another
engine is listed as such and never served as an answer. An entry that cannot be read is reported
(StoreError) and never silently recomputed over.

Two sessions asking for the same missing result compute it once: the second waits on a per-key
file lock and then reads the first one's entry. A store whose database file is damaged is a cache,
so it is rebuilt: the bad file is moved aside (`cache.db.damaged-<time>`) and the next listing and
the next run say so.
"""
from __future__ import annotations

import dataclasses
import pickle
import sqlite3
import time
from pathlib import Path

import diskcache

from ..common import settings
from ..common.errors import StoreError
from ..common.files import locked
from ..common.hashing import content_hash, engine_version


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    kind: str  # "trace", "ablation", "sweep", ...
    created: float  # unix time
    summary: dict  # small JSON-able description for listings
    result: object
    engine: str = ""  # common.hashing.engine_version() of the engine that made it; "" before versions were kept

    @property
    def outdated(self) -> bool:
        """Made by another (older) engine: listed, reopened, never served as an answer."""
        return self.engine != engine_version()


class ResultStore:
    """Results on disk. Safe to share between threads and processes (diskcache uses SQLite)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else settings.subdir("results")
        self._recovered: dict[str, str] = {}  # "listing" / "run" -> the rebuild message, said once by each
        try:
            self._cache = self._open()
        except sqlite3.DatabaseError as exc:
            self._cache = self._rebuild(exc)

    def _open(self) -> diskcache.Cache:
        cache = diskcache.Cache(str(self.path), disk_pickle_protocol=pickle.HIGHEST_PROTOCOL)
        try:
            len(cache)  # reads the database: a damaged one raises here
        except sqlite3.DatabaseError:
            cache.close()
            raise
        return cache

    def _rebuild(self, exc: Exception) -> diskcache.Cache:
        db = self.path / diskcache.core.DBNAME
        aside = db.with_name(f"{db.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            db.replace(aside)
            for extra in ("-wal", "-shm"):  # SQLite's journal of the damaged file belongs with it
                journal = db.with_name(db.name + extra)
                if journal.exists():
                    journal.replace(aside.with_name(aside.name + extra))
            cache = self._open()
        except (OSError, sqlite3.DatabaseError) as again:
            raise StoreError(f"the result store {db} cannot be read ({exc}) and could not be rebuilt ({again}): "
                             "move the file away and start again") from again
        message = (f"the result store {db} could not be read ({exc}): it was moved aside to {aside.name} and an "
                   "empty store started; earlier results are no longer listed")
        self._recovered = {"listing": message, "run": message}
        return cache

    def get(self, key: str) -> Entry | None:
        """The entry, None when absent; StoreError when present but unreadable."""
        try:
            entry = self._cache.get(key, default=None, retry=True)
            if entry is None and key in self._cache:  # listed, yet no value: absent then just written?
                entry = self._cache.get(key, default=None, retry=True)
                if entry is None and key in self._cache:
                    # diskcache answers "absent" when an entry's value file is gone
                    raise FileNotFoundError(f"its value file under {self.path} is missing")
        except Exception as exc:  # unpickling can raise nearly anything on a damaged entry
            raise StoreError(f"result {key} is stored but cannot be read ({type(exc).__name__}: {exc})") from exc
        if entry is not None and not isinstance(entry, Entry):
            raise StoreError(f"result {key} is stored but is not a Synapse result ({type(entry).__name__})")
        return entry

    def put(self, key: str, kind: str, result, summary: dict | None = None) -> Entry:
        entry = Entry(key=key, kind=kind, created=time.time(), summary=summary or {}, result=result,
                      engine=engine_version())
        self._cache.set(key, entry, retry=True)
        return entry

    def _lookup(self, key: str, notes: list[str]) -> Entry | None:
        """The entry when this engine may answer with it; None (and a note) when it must be computed."""
        try:
            entry = self.get(key)
        except StoreError as exc:
            notes.append(f"{exc}; it was computed again and replaced")
            return None
        if entry is not None and entry.outdated:
            notes.append(f"result {key} was made by another engine ({entry.engine or 'before versions were kept'}); "
                         f"it was computed again by this one ({engine_version()})")
            return None
        return entry

    def get_or_compute(self, kind: str, config: dict, compute, summary: dict | None = None):
        """Answer from the store when the same request was made before by this engine, else compute and store.

        Returns (entry, from_cache, notes). An unreadable entry is replaced by a fresh result and
        the notes say so. Concurrent calls for the same missing key compute it once: the others wait
        for the first and answer from the store.
        """
        key = content_hash(kind, config)
        notes = self._take_recovery("run")
        entry = self._lookup(key, [])
        if entry is not None:
            return entry, True, notes
        with locked(self.path / "locks" / f"{key}.lock"):
            entry = self._lookup(key, notes)  # computed by another session while this one waited?
            if entry is not None:
                return entry, True, notes
            return self.put(key, kind, compute(), summary), False, notes

    def _take_recovery(self, where: str) -> list[str]:
        message = self._recovered.pop(where, None)
        return [message] if message else []

    def delete(self, key: str) -> bool:
        return bool(self._cache.delete(key, retry=True))

    def keys(self) -> list[str]:
        return list(self._cache.iterkeys())

    def entries(self) -> tuple[list[Entry], list[str]]:
        """Every readable entry, newest first, and one message per entry that could not be read."""
        good, bad = [], self._take_recovery("listing")
        for key in self.keys():
            try:
                entry = self.get(key)
            except StoreError as exc:
                bad.append(str(exc))
                continue
            if entry is not None:
                good.append(entry)
        return sorted(good, key=lambda e: e.created, reverse=True), bad

    def close(self) -> None:
        self._cache.close()
