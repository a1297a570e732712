"""Where Synapse keeps its files, and the environment variables that steer it.

SYNAPSE_HOME     data directory (default ~/.synapse): model caches, results, masks.
SYNAPSE_MODEL    model spec used when none is given (default "bundled").
SYNAPSE_MODEL_CACHE  where converted model weights are kept (default $SYNAPSE_HOME/models).
SYNAPSE_DEVICE   "auto" (cuda, then mps, then cpu), or a torch device string.
SYNAPSE_DEVICE_MAP  spread the layers over devices: auto, balanced, or a JSON map of module -> device.
SYNAPSE_DTYPE    "auto" (bfloat16 on cuda, float32 elsewhere), "float32", "bfloat16", "float16".
"""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The data directory; created on first use."""
    path = Path(os.environ.get("SYNAPSE_HOME") or Path.home() / ".synapse").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_model_spec() -> str:
    return os.environ.get("SYNAPSE_MODEL", "bundled")


def default_device() -> str:
    return os.environ.get("SYNAPSE_DEVICE", "auto")


def default_device_map() -> str | None:
    return os.environ.get("SYNAPSE_DEVICE_MAP") or None


def default_dtype() -> str:
    return os.environ.get("SYNAPSE_DTYPE", "auto")


def model_cache_dir() -> Path:
    """Converted weights; may live outside SYNAPSE_HOME so tests can share one conversion."""
    env = os.environ.get("SYNAPSE_MODEL_CACHE")
    path = Path(env).expanduser() if env else home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
