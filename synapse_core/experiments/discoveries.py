"""Discoveries as stored experiments: the same config is answered from the result store."""
from __future__ import annotations

from ..analysis.discovery import DiscoveryConfig, DiscoveryProgress, DiscoveryResult, discover
from ..common.errors import BadInput, StoreError
from ..jobs.config import EngineConfig
from ..jobs.engine import Cancel, mapper
from ..model.loading import ModelHandle
from .records import Experiment, StoredExperiment
from .store import ResultStore


def run_discovery(handle: ModelHandle, config: DiscoveryConfig, store: ResultStore | None = None,
                  progress: DiscoveryProgress | None = None, engine: EngineConfig | None = None,
                  cancel: Cancel | None = None) -> Experiment:
    """Answer from the store when this exact discovery was run before, else run and store it.

    Each stage's per-prompt work runs on `engine` (default local; see synapse_core.jobs), which is
    not part of the config: the same discovery, hash and numbers on either. cancel() turning true
    stops it with JobCancelled and nothing is stored.

    The result is an experiments.Experiment (config, result, hash, created, from_cache, notes), so a
    discovery is listed, reopened by hash and exported like any other experiment.
    """
    if config.fingerprint != handle.fingerprint or config.dtype != str(handle.dtype):
        raise BadInput(f"discovery {config.hash} was made with {config.model} (weights {config.fingerprint}, "
                       f"{config.dtype}); the loaded model is {handle.name} ({handle.fingerprint}, {handle.dtype})")
    store = store or ResultStore()
    each = mapper(handle, engine, cancel)
    entry, from_cache, notes = store.get_or_compute(
        config.kind, config, lambda: StoredExperiment(config, discover(handle, config, progress, each)),
        summary={"kind": config.kind, "model": config.model, "title": config.title})
    if not isinstance(entry.result, StoredExperiment) or not isinstance(entry.result.result, DiscoveryResult):
        raise StoreError(f"result {entry.key} is a {entry.kind} entry, not a discovery")
    return Experiment(entry.result.config, entry.result.result, entry.key, entry.created, from_cache, tuple(notes))
