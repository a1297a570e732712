"""Synapse engine: load a model, trace it, intervene on it. Never imports streamlit."""
from .errors import BadInput, ModelLoadError, StoreError, SynapseError, UnsupportedModel
from .generation import Sampling
from .loading import ModelHandle, load_model, prepare
from .spec import HeadMask, HeadRef, Intervention, parse_head, parse_heads
from .trace import TraceResult, generate, trace

__all__ = [
    "BadInput", "HeadMask", "HeadRef", "Intervention", "ModelHandle", "ModelLoadError", "Sampling",
    "StoreError", "SynapseError", "TraceResult", "UnsupportedModel", "generate", "load_model",
    "parse_head", "parse_heads", "prepare", "trace",
]
