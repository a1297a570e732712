"""A disk cache of results under $SYNAPSE_HOME/results, keyed by a content hash of the request.

Keys are sha256 of canonical JSON (sorted keys), so the same request always maps to the same key
and any change in model, weights, prompt, settings or masks maps to another. An entry that cannot
be read is reported (StoreError) and never silently recomputed over.
"""
from __future__ import annotations

import dataclasses
import pickle
import time
from pathlib import Path

import diskcache

from ..common import settings
from ..common.errors import StoreError
from ..common.hashing import content_hash


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    kind: str  # "trace", "ablation", "sweep", ...
    created: float  # unix time
    summary: dict  # small JSON-able description for listings
    result: object


class ResultStore:
    """Results on disk. Safe to share between threads and processes (diskcache uses SQLite)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else settings.subdir("results")
        self._cache = diskcache.Cache(str(self.path), disk_pickle_protocol=pickle.HIGHEST_PROTOCOL)

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
        entry = Entry(key=key, kind=kind, created=time.time(), summary=summary or {}, result=result)
        self._cache.set(key, entry, retry=True)
        return entry

    def get_or_compute(self, kind: str, config: dict, compute, summary: dict | None = None):
        """Answer from the store when the same request was made before, else compute and store.

        Returns (entry, from_cache, notes). An unreadable entry is replaced by a fresh result and
        the notes say so.
        """
        key = content_hash(kind, config)
        notes = []
        try:
            entry = self.get(key)
        except StoreError as exc:
            entry = None
            notes.append(f"{exc}; it was computed again and replaced")
        if entry is not None:
            return entry, True, notes
        return self.put(key, kind, compute(), summary), False, notes

    def delete(self, key: str) -> bool:
        return bool(self._cache.delete(key, retry=True))

    def keys(self) -> list[str]:
        return list(self._cache.iterkeys())

    def entries(self) -> tuple[list[Entry], list[str]]:
        """Every readable entry, newest first, and one message per entry that could not be read."""
        good, bad = [], []
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
