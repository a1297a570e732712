"""The content hash that names every stored result: a config's canonical JSON, hashed.

It sits in the lowest layer because configs of every layer (discovery, traces, experiments) hash
themselves with it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np


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
    """Stable hash of a request: 16 hex digits.

    >>> content_hash("trace", {"prompt": "hi"}) == content_hash("trace", {"prompt": "hi"})
    True
    """
    text = json.dumps({"kind": kind, "config": _plain(config)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
