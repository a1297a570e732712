"""What the sidebar says while a model loads: a GGUF model's first load converts it (slow), later
loads read the safetensors copy (seconds). Asks synapse_core.model.gguf, which imports no torch."""
from __future__ import annotations

from synapse_core.common.errors import SynapseError
from synapse_core.model.gguf import gguf_path, is_converted


def loading_text(spec: str) -> str:
    try:
        path = gguf_path(spec)
    except SynapseError:  # e.g. a .gguf path that does not exist: the load itself says so
        path = None
    if path is not None and not is_converted(path):
        return (f"Converting {path.name} to safetensors, once (about 20 s, minutes on a busy machine; "
                "`synapse prepare-model` does it ahead) …")
    return f"Loading model {spec!r} …"
