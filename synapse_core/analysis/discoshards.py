"""Discovery's per-prompt work as shard functions (model.mapper), so a discovery over a prompt set
runs on either job engine: each stage maps one of these over the prompts of its split, and
discovery.py builds the ranking, the circuit and the verdicts from the per-prompt results in prompt
order, the same whichever engine computed them.

A case is (ids, target): the prompt's token ids (1, pos) and its interventions.metrics.Target.
Every result is plain numpy or floats, so it pickles from a worker.
"""
from __future__ import annotations

import numpy as np

from ..arch.spec import Intervention
from ..interventions.ops import OpSettings, prepare
from ..interventions.sweep import batched_scores
from ..model.generation import Progress
from ..model.loading import ModelHandle
from .atpstar import METHOD_STAR, attribute_heads_star
from .attribution import METHOD, attribute_heads
from .circuit import head_set_scores

RANKINGS = {"atp*": (attribute_heads_star, METHOD_STAR), "atp": (attribute_heads, METHOD)}  # ranking -> (fn, method)


def effects(scores: dict, metric: str) -> np.ndarray:
    """Each row's metric minus the clean row of its own pass: (n,) float64."""
    return (scores[metric].double() - scores["clean_" + metric].double()).cpu().numpy()


def _each(cases, progress: Progress | None, what: str, fn) -> list:
    out = []
    for i, (ids, target) in enumerate(cases):
        out.append(fn(ids, target))
        if progress:
            progress(i + 1, len(cases), f"{what} {i + 1}/{len(cases)}")
    return out


def rank_shard(handle: ModelHandle, cases, progress: Progress | None = None, *, ranking: str, metric: str,
               masks) -> list:
    """(estimates, ranking), each (layer, head) float32, of every prompt: step 1 of a discovery."""
    fn = RANKINGS[ranking][0]

    def one(ids, target):
        a = fn(handle, ids, target, metric, masks)
        return a.estimates.cpu().numpy(), a.ranking.cpu().numpy()

    return _each(cases, progress, "ranked prompt", one)


def verify_shard(handle: ModelHandle, cases, progress: Progress | None = None, *,
                 interventions: tuple[Intervention, ...], metric: str, masks) -> list:
    """(effects (candidate,), clean metric) of every prompt: each candidate ablated alone, step 2."""

    def one(ids, target):
        prepared = prepare(handle, ids, list(interventions), OpSettings(), masks)
        scores, _ = batched_scores(handle, ids, prepared, target, masks)
        return effects(scores, metric), float(scores["clean_" + metric][0])

    return _each(cases, progress, "verified prompt", one)


def head_sets_shard(handle: ModelHandle, cases, progress: Progress | None = None, *, sets, metric: str,
                    masks) -> list:
    """Every set of heads ablated together on every prompt (pairs, step 3; the circuit and its random
    sets, step 4): per prompt (effects (set,), on_target (set,) bool, clean metric, clean top token)."""

    def one(ids, target):
        scores, _ = head_set_scores(handle, ids, sets, target, masks)
        return (effects(scores, metric), (scores["top_id"] == target.id).cpu().numpy(),
                float(scores["clean_" + metric][0]), int(scores["clean_logits"].argmax()))

    return _each(cases, progress, "ablated head sets on prompt", one)
