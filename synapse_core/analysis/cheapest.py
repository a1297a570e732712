"""The cheapest sufficient quarantine: the smallest set of a discovery's candidate heads that reaches
a chosen share of the full circuit's effect, and the trade-off between target effect and cost.

Greedy forward selection with exact re-measurement: start from no heads; at each step ablate the
current set plus each remaining candidate (one batch row a set, `circuit.head_set_scores`, on every
prompt the circuit was judged on), keep the candidate whose set lowers the metric most, and stop once
the set's measured effect reaches `share` of the full circuit's (effect / circuit effect >= share).
Each step's effect is a real ablation of the whole set, never a sum of single effects, so redundant
or synergistic heads are counted as they act together. Greedy is not guaranteed to find the smallest
such set (that is a search over every subset); it finds a small one in (steps x candidates) rows.

The trade-off chart puts every greedy prefix and the full circuit at (target effect, perplexity
increase); a point is on the Pareto front when no other point has at least its share of the effect
for no more perplexity, better in one of the two.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..arch.spec import HeadRef, normalize_masks
from ..common.errors import BadInput
from ..interventions.metrics import resolve_target
from ..model.loading import ModelHandle
from ..model.tokens import encode_prompt
from .circuit import head_set_scores
from .discovery import DiscoveryResult

DEFAULT_SHARE = 0.8
METHOD = ("greedy forward selection over the discovery's verified candidates, each step re-measured by "
          "ablating the whole set on the circuit's prompts")


@dataclass(frozen=True)
class Step:
    """One greedy step: the set so far and its measured effect."""

    heads: tuple[HeadRef, ...]
    effect: float  # metric(set ablated) - metric(clean), mean over the prompts
    share: float  # effect / the full circuit's effect


@dataclass(frozen=True, eq=False)
class CheapestSet:
    """The greedy path, and the first set on it that reaches `share` of the circuit's effect."""

    metric: str
    circuit: tuple[HeadRef, ...]
    circuit_effect: float  # the full circuit ablated together (re-measured here)
    share: float  # the share of circuit_effect asked for
    steps: tuple[Step, ...]
    chosen: tuple[HeadRef, ...] | None  # None when no set of the candidates reaches the share
    rows: int  # head sets ablated
    seconds: float
    method: str = METHOD

    def to_json(self) -> dict:
        names = lambda refs: [f"{r.layer}.{r.head}" for r in refs]
        return {"metric": self.metric, "circuit": names(self.circuit), "circuit_effect": self.circuit_effect,
                "share": self.share, "chosen": None if self.chosen is None else names(self.chosen),
                "steps": [{"heads": names(s.heads), "effect": s.effect, "share": s.share} for s in self.steps],
                "rows": self.rows, "seconds": self.seconds, "method": self.method}


def _effects(handle, ids, targets, metric, sets, masks) -> np.ndarray:
    """Mean over prompts of metric(set ablated) - metric(clean), one value a set."""
    out = np.zeros(len(sets))
    for i, t in zip(ids, targets):
        scores, _ = head_set_scores(handle, i, sets, t, masks)
        out += (scores[metric].double() - scores["clean_" + metric].double()).cpu().numpy()
    return out / len(ids)


def cheapest_set(handle: ModelHandle, result: DiscoveryResult, share: float = DEFAULT_SHARE,
                 max_heads: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> CheapestSet:
    """Greedy search (see the module docstring) over a discovery's verified candidates for the
    smallest set reaching `share` of its circuit's effect, on the prompts the circuit was judged on."""
    if result.fingerprint != handle.fingerprint:
        raise BadInput(f"the discovery was made with weights {result.fingerprint}, not {handle.fingerprint}")
    return greedy_search(handle, [result.cases[i] for i in result.circuit.prompts], [h.ref for h in result.candidates],
                         [h.ref for h in result.heads], result.metric, result.masks, share, max_heads, progress)


def greedy_search(handle: ModelHandle, cases, candidates, circuit, metric: str, masks=(),
                  share: float = DEFAULT_SHARE, max_heads: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> CheapestSet:
    """Greedy search over `candidates` (HeadRef) for the smallest set whose ablation reaches `share` of
    the effect of ablating `circuit`, metric(ablated) - metric(clean) averaged over `cases`. The path
    goes on to the circuit's size so the chart shows the trade-off past the chosen point; max_heads
    bounds it (default: the circuit's size, or the chosen set's when larger)."""
    t0 = time.perf_counter()
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise BadInput(f"share {share!r} is out of range: give the share of the circuit's effect to reach, 0 to 1")
    masks = normalize_masks(masks, handle.arch)
    ids = [encode_prompt(handle, c.prompt)[0] for c in cases]
    targets = [resolve_target(handle, c.target, c.contrast) for c in cases]
    circuit = tuple(circuit)
    full = float(_effects(handle, ids, targets, metric, [circuit], masks)[0])
    if full >= 0:
        raise BadInput(f"the circuit does not lower {metric} (effect {full:+.3f}): there is no effect to reach "
                       "a share of")
    pool = list(candidates)
    limit = max_heads or len(circuit)
    steps, chosen, rows = [], None, 1
    current: tuple[HeadRef, ...] = ()
    while pool and (len(current) < limit or chosen is None):
        sets = [current + (c,) for c in pool]
        effects = _effects(handle, ids, targets, metric, sets, masks)
        rows += len(sets)
        best = int(np.argmin(effects))
        current = sets[best]
        pool.pop(best)
        steps.append(Step(current, float(effects[best]), float(effects[best] / full)))
        if chosen is None and effects[best] / full >= share:
            chosen = current
        if progress:
            progress(len(steps), max(limit, len(steps)))
        if max_heads and len(current) >= max_heads:
            break
    return CheapestSet(metric, circuit, full, float(share), tuple(steps), chosen, rows, time.perf_counter() - t0)


@dataclass(frozen=True)
class TradeoffPoint:
    """One head set on the trade-off chart."""

    label: str  # "greedy 3" or "circuit"
    heads: tuple[HeadRef, ...]
    effect: float  # target effect (metric change; negative lowers the unwanted output)
    share: float  # effect / the circuit's effect
    perplexity_change: float | None  # perplexity after / before - 1 on the general text
    flipped: int | None  # capability prompts whose answer changes
    experiment: str | None  # the cost report's hash
    pareto: bool = False


def pareto_front(points: list[TradeoffPoint]) -> list[TradeoffPoint]:
    """Mark each point that no other point dominates (at least its share for no more perplexity,
    strictly better in one). Points without a perplexity are never on the front."""
    out = []
    for p in points:
        dominated = p.perplexity_change is None or any(
            q is not p and q.perplexity_change is not None and q.share >= p.share
            and q.perplexity_change <= p.perplexity_change
            and (q.share > p.share or q.perplexity_change < p.perplexity_change) for q in points)
        out.append(TradeoffPoint(**{**p.__dict__, "pareto": not dominated}))
    return out
