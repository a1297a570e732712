"""Synapse engine: load a model, trace it, intervene on it. Never imports streamlit.

The engine is a stack of subpackages, each importing only from the ones listed before it:

    common          errors, settings (where files live), durable files and locks, content hashes
    arch            architecture adapters (where each family keeps its parts) and the names of
                    heads, sites and interventions
    hooks           the hook dispatcher, Synapse's attention function, head masks
    model           loading (hub, folder, GGUF), tokens, generation
    features        sparse autoencoders and transcoders over the model's activations
    interventions   ops (zero, mean, patch, steer), ablation, sweeps, metrics, prompt sets
    analysis        trace, attention patterns, token influence, composition, attribution,
                    discovery, circuits, verification, the cost of a quarantine (perplexity,
                    capability prompts) and the cheapest sufficient set
    graphs          attribution graphs of a frozen (local replacement) model: adjacency, pruning,
                    influence, supernodes
    jobs            one interface for long jobs over a prompt set, two engines: local (in-process)
                    and ray (a pool of model actors, shards, retries)
    experiments     the result store and every stored experiment (ablations, sweeps, traces,
                    discoveries, cost reports)
    governance      mask store, audit log, outbox, catalog, OpenMetadata client, change events
    cli             one module a command group, their shared helpers, and the parser

`LAYERS` below is that order; tests/unit/test_layers.py fails on an import that points up or on
an import circle. This module is the facade above them all: the names below are imported on first
use, so `import synapse_core` (and `synapse --help`) loads neither torch nor transformers.
"""
from __future__ import annotations

import importlib

LAYERS = ("common", "arch", "hooks", "model", "features", "interventions", "analysis", "graphs", "jobs",
          "experiments", "governance", "cli")

_EXPORTS = {
    "BadInput": "common.errors", "ModelLoadError": "common.errors", "StoreError": "common.errors",
    "SynapseError": "common.errors", "UnsupportedModel": "common.errors",
    "HeadMask": "arch.spec", "HeadRef": "arch.spec", "Intervention": "arch.spec", "parse_head": "arch.spec",
    "parse_heads": "arch.spec",
    "ModelHandle": "model.loading", "load_model": "model.loading", "prepare": "model.loading",
    "Sampling": "model.generation",
    "TraceResult": "analysis.trace", "generate": "analysis.trace", "trace": "analysis.trace",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'synapse_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
