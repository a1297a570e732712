"""Traces as stored experiments: hashed, kept on disk, listed in History and reopened by
`?experiment=<hash>` like ablations and discoveries."""
from __future__ import annotations

from dataclasses import dataclass

from ..analysis.trace import TraceResult, trace
from ..arch.spec import HeadMask, normalize_masks
from ..common.errors import StoreError
from ..common.hashing import Hashed, shorten
from ..model.generation import Progress, Sampling
from ..model.loading import ModelHandle
from .records import Experiment, StoredExperiment, load_experiment
from .store import ResultStore


@dataclass(frozen=True)
class TraceConfig(Hashed):
    """Everything a trace depends on; its content hash is the store key and the experiment id."""

    model: str  # model name
    fingerprint: str  # weights fingerprint
    dtype: str
    prompt: str
    max_new_tokens: int
    masks: tuple[HeadMask, ...]  # heads masked during the run (quarantine and session masks)
    sampling: Sampling
    capture_attention: bool
    kind: str = "trace"
    metric: str = "activity"  # what the History list calls this kind's measure
    layout: int = 2  # TraceResult's fields (2: written-norm activity, logit fidelity, two probabilities); a new hash

    @property
    def prompts(self) -> tuple[str, ...]:
        return (self.prompt,)

    @property
    def title(self) -> str:
        prompt = shorten(self.prompt)
        return f"trace \u00b7 {prompt!r} \u00b7 {self.max_new_tokens} new tokens"


def trace_experiment_config(handle: ModelHandle, prompt: str, max_new_tokens: int, masks=(),
                            sampling: Sampling = Sampling(), capture_attention: bool = True) -> TraceConfig:
    return TraceConfig(model=handle.name, fingerprint=handle.fingerprint, dtype=str(handle.dtype), prompt=prompt,
                       max_new_tokens=int(max_new_tokens), masks=normalize_masks(masks, handle.arch),
                       sampling=sampling, capture_attention=capture_attention)


def run_trace(handle: ModelHandle, config: TraceConfig, store: ResultStore | None = None,
              progress: Progress | None = None, on_generated=None) -> Experiment:
    """Answer from the store when this exact trace was made before, else trace and store it."""
    store = store or ResultStore()
    entry, from_cache, notes = store.get_or_compute(
        config.kind, config,
        lambda: StoredExperiment(config, trace(handle, config.prompt, config.max_new_tokens, masks=config.masks,
                                               sampling=config.sampling,
                                               capture_attention=config.capture_attention, progress=progress,
                                               on_generated=on_generated)),
        summary={"kind": config.kind, "model": config.model, "title": config.title})
    return _as_trace(Experiment(entry.result.config, entry.result.result, entry.key, entry.created, from_cache,
                                tuple(notes)) if isinstance(entry.result, StoredExperiment) else entry)


def load_trace(store: ResultStore, key: str) -> Experiment | None:
    """The stored trace of a `?experiment=` id; None when absent, StoreError when it is another kind."""
    exp = load_experiment(store, key)
    return None if exp is None else _as_trace(exp)


def _as_trace(exp) -> Experiment:
    if not isinstance(exp, Experiment) or not isinstance(exp.result, TraceResult):
        key = getattr(exp, "hash", None) or getattr(exp, "key", "?")
        raise StoreError(f"result {key} is not a trace")
    return exp
