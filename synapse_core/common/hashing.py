"""The content hash that names every stored result: a config's canonical JSON and the engine's
version, hashed.

It sits in the lowest layer because configs of every layer (discovery, traces, experiments) hash
themselves with it. The engine version is the package's version and RESULT_SCHEMA, so a result made
by another engine never answers a request to this one.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from importlib.metadata import PackageNotFoundError, version

import numpy as np

PACKAGE = "synapse-interp"
# Bump when the same request would give a different or differently shaped result: 2 = clean values
# from the same batched pass, discoveries judged out of sample, AtP* ranking.
RESULT_SCHEMA = 2


@functools.lru_cache(maxsize=1)
def engine_version() -> str:
    """The package version and the result schema, e.g. "0.2.0+schema2"; part of every content hash."""
    try:
        package = version(PACKAGE)
    except PackageNotFoundError:  # run from a source tree that was never installed
        package = "source"
    return f"{package}+schema{RESULT_SCHEMA}"


def _plain(value):
    if isinstance(value, np.generic):  # numpy scalars: hash as the Python number they equal
        value = value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, float):
        return repr(value)  # exact, and 0.1 stays 0.1
    return value


def content_hash(kind: str, config: dict) -> str:
    """Stable hash of a request to this engine (engine_version()): 16 hex digits.

    >>> content_hash("trace", {"prompt": "hi"}) == content_hash("trace", {"prompt": "hi"})
    True
    """
    text = json.dumps({"kind": kind, "engine": engine_version(), "config": _plain(config)}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Hashed:
    """A mixin for configs that name their result by content: `kind` and every field, hashed."""

    kind: str

    @property
    def hash(self) -> str:
        """The content hash: the store key and the `?experiment=` id."""
        return content_hash(self.kind, self)


def shorten(text: str, limit: int = 40) -> str:
    """The text cut to `limit` characters, the last one an ellipsis when cut (titles in lists)."""
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"
