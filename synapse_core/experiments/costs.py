"""Cost reports as stored experiments: hashed, listed in History, reopened and exported like any
other. The text score and the prompts' next-token logits with the masks in force ("before") are the
same for every report on that text and prompt set, so the store keeps them too (kinds "textscore" and
"promptlogits", float32, not listed): a later report runs the text and the prompts once, with the
new masks."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch

from ..analysis.capabilities import next_token_logits
from ..analysis.cheapest import CheapestSet, TradeoffPoint, pareto_front
from ..analysis.cost import CostConfig, CostProgress, CostReport, cost_config, cost_report, prompts_of
from ..analysis.perplexity import TextDocs, TextScore, score_text
from ..common.errors import BadInput, StoreError
from ..jobs.config import EngineConfig
from ..jobs.engine import Cancel, mapper
from ..model.loading import ModelHandle
from ..model.mapper import Mapper
from .records import Experiment, StoredExperiment, load_experiment
from .store import ResultStore


def _text_before(handle: ModelHandle, config: CostConfig, text: TextDocs, store: ResultStore,
                 progress: CostProgress | None, each: Mapper) -> TextScore:
    key = {"model": config.model, "fingerprint": config.fingerprint, "dtype": config.dtype, "text": text.digest,
           "window": config.window, "masks": [asdict(m) for m in config.masks]}
    step = (lambda done, total: progress("text before", done, total)) if progress else None
    entry, _, _ = store.get_or_compute("textscore", key, lambda: score_text(handle, text, config.window,
                                                                            config.masks, step, each))
    if not isinstance(entry.result, TextScore):
        raise StoreError(f"result {entry.key} is a {entry.kind} entry, not a text score")
    return entry.result


def _logits_before(handle: ModelHandle, config: CostConfig, store: ResultStore,
                   progress: CostProgress | None, each: Mapper) -> torch.Tensor:
    """The prompts' next-token logits with the masks in force, kept like the text score."""
    prompts = prompts_of(config)
    key = {"model": config.model, "fingerprint": config.fingerprint, "dtype": config.dtype, "prompts": prompts,
           "masks": [asdict(m) for m in config.masks]}
    step = (lambda done, total: progress("capabilities before", done, total)) if progress else None
    entry, _, _ = store.get_or_compute("promptlogits", key,
                                       lambda: next_token_logits(handle, prompts, config.masks, step, each))
    if not isinstance(entry.result, torch.Tensor):
        raise StoreError(f"result {entry.key} is a {entry.kind} entry, not prompt logits")
    return entry.result


def run_cost(handle: ModelHandle, config: CostConfig, text: TextDocs | None = None, store: ResultStore | None = None,
             progress: CostProgress | None = None, engine: EngineConfig | None = None,
             cancel: Cancel | None = None) -> Experiment:
    """Answer from the store when this exact report was made before, else measure and store it.
    The text's and the prompts' forward passes run on `engine` (default local, in this process); the
    engine is not part of the report's hash and changes none of its numbers (forward_passes counts
    the passes reported back: one a shard on Ray). cancel() turning true stops it, storing nothing.

    >>> exp = run_cost(handle, cost_config(handle, ["0.6", "23.5"], text=corpus_docs(handle)), corpus_docs(handle))
    >>> exp.result.verdict()
    """
    if config.fingerprint != handle.fingerprint or config.dtype != str(handle.dtype):
        raise BadInput(f"cost report {config.hash} was made with {config.model} (weights {config.fingerprint}, "
                       f"{config.dtype}); the loaded model is {handle.name} ({handle.fingerprint}, {handle.dtype})")
    store = store or ResultStore()
    each = mapper(handle, engine, cancel)

    def compute():
        before = _text_before(handle, config, text, store, progress, each) if text is not None else None
        logits = _logits_before(handle, config, store, progress, each)
        return StoredExperiment(config, cost_report(handle, config, text, before, progress, logits, each))

    entry, from_cache, notes = store.get_or_compute(
        config.kind, config, compute, summary={"kind": config.kind, "model": config.model, "title": config.title})
    return _as_cost(Experiment(entry.result.config, entry.result.result, entry.key, entry.created, from_cache,
                               tuple(notes)) if isinstance(entry.result, StoredExperiment) else entry)


def load_cost(store: ResultStore, key: str) -> Experiment | None:
    """The stored report of a `?experiment=` id; None when absent, StoreError when it is another kind."""
    exp = load_experiment(store, key)
    return None if exp is None else _as_cost(exp)


def _as_cost(exp) -> Experiment:
    if not isinstance(exp, Experiment) or not isinstance(exp.result, CostReport):
        key = getattr(exp, "hash", None) or getattr(exp, "key", "?")
        raise StoreError(f"result {key} is not a cost report")
    return exp


def evidence(exp: Experiment) -> str:
    """What a quarantine keeps of its cost report: the report's hash and its verdict."""
    return f"report {exp.hash}: {_as_cost(exp).result.verdict()}"


def tradeoff(handle: ModelHandle, search: CheapestSet, masks=(), text: TextDocs | None = None, window: int = 256,
             capabilities=None, targets=(), store: ResultStore | None = None,
             progress: Callable[[int, int], None] | None = None) -> list[TradeoffPoint]:
    """Each set on the greedy path and the full circuit at (target effect, perplexity increase), from
    one stored cost report each (level projection, as discovery ablates), the Pareto front marked."""
    store = store or ResultStore()
    sets = [(f"greedy {len(s.heads)}", s.heads, s.effect) for s in search.steps]
    if frozenset(search.circuit) not in {frozenset(s.heads) for s in search.steps}:
        sets.append(("circuit", search.circuit, search.circuit_effect))
    points = []
    for done, (label, heads, effect) in enumerate(sets):
        config = cost_config(handle, heads, masks, text, window, capabilities, targets)
        exp = run_cost(handle, config, text, store)
        r = exp.result
        points.append(TradeoffPoint(label, tuple(heads), effect, effect / search.circuit_effect,
                                    None if r.text is None else r.text.perplexity_change, len(r.flipped), exp.hash))
        if progress:
            progress(done + 1, len(sets))
    return pareto_front(points)
