"""Labels people give features, stored with who gave them and when.

The shipped SAE folders live inside the installed package, which may be read-only and is replaced
on upgrade, so a person's label is kept under $SYNAPSE_HOME/feature_labels/<sae name>.json, keyed
by feature index; the newest label of a feature wins over its automatic one.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..common import settings
from ..common.errors import BadInput, StoreError
from ..common.files import atomic_write_json


@dataclass(frozen=True)
class HumanLabel:
    text: str
    by: str  # who gave it
    at: str  # when, UTC, ISO 8601


def _path(sae: str) -> Path:
    return settings.subdir("feature_labels") / f"{sae}.json"


def human_labels(sae: str) -> dict[int, HumanLabel]:
    """Every person's label of one SAE, by feature index."""
    path = _path(sae)
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {int(i): HumanLabel(**v) for i, v in raw.items()}
    except (OSError, ValueError, TypeError) as exc:
        raise StoreError(f"{path} is not a readable label file: {exc}") from exc


def set_label(sae: str, index: int, text: str, by: str) -> HumanLabel:
    """Store a person's label of feature `index` of `sae` (checked by the caller); returns it."""
    text, by = text.strip(), by.strip()
    if not text:
        raise BadInput("the label is empty: give some text")
    if not by:
        raise BadInput("say who gives the label (--by NAME)")
    label = HumanLabel(text, by, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    known = human_labels(sae)
    known[int(index)] = label
    atomic_write_json(_path(sae), {str(i): asdict(v) for i, v in sorted(known.items())})
    return label
