"""Sets of heads ablated together: pair sweeps, the circuit's effect, random baselines, and the
edges of the circuit graph from composition scores.

`head_set_scores` is sweep.batched_scores for *sets* of heads: one batch row per set, every head of
the row's set zero-ablated (its attn.z slice multiplied by 0 at every position). Rows are ordered
by the lowest layer they touch and a chunk of rows runs the layers below its lowest one once at
batch 1, widening to one row per set at the residual stream just before it, as sweep.py does.
Row 0 of every pass is the clean run, the baseline of that pass's rows (see sweep.py).
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ..arch.adapters import Architecture
from ..arch.spec import HeadRef
from ..hooks.dispatch import SiteFn
from ..hooks.masking import mask_fns, merge_fns
from ..interventions.metrics import Target
from ..interventions.ops import forward_last
from ..interventions.sweep import BATCH_ROWS, TOKEN_BUDGET, with_clean
from ..model.loading import ModelHandle
from .composition import composition_scores

EDGE_WEIGHT = "max of Q/K/V composition scores (from the weights)"
ADDITIVE_TOLERANCE = 0.1  # |joint - sum| within 10% of |e_a| + |e_b| counts as additive

HeadSet = tuple[HeadRef, ...]


def _widen(n: int) -> SiteFn:
    def fn(x):  # resid (1, pos, d_model) -> (n, pos, d_model)
        return x.expand(n, *x.shape[1:]).contiguous()

    return fn


def _chunk_table(handle: ModelHandle, sets: list[HeadSet]) -> tuple[int, dict]:
    """(first layer touched, site functions) for one pass whose batch row 0 is clean and row r + 1
    ablates sets[r]."""
    n, arch = len(sets) + 1, handle.arch
    start = min(ref.layer for s in sets for ref in s)
    table: dict = defaultdict(list)
    if start > 0:
        table[(start - 1, "resid.post")].append(_widen(n))
    keep: dict[int, torch.Tensor] = {}
    for r, heads in enumerate(sets):
        for ref in heads:
            if ref.layer not in keep:
                keep[ref.layer] = torch.ones(n, 1, arch.n_heads, 1, dtype=handle.dtype, device=handle.device)
            keep[ref.layer][r + 1, 0, ref.head] = 0
    for layer, m in keep.items():
        # z (batch, pos, head, d_head), m (batch, 1, head, 1); m moves to the layer's device (a device map)
        table[(layer, "attn.z")].append(lambda z, m=m: z * m.to(z.device))
    return start, dict(table)


def head_set_scores(handle: ModelHandle, ids: torch.Tensor, sets, target: Target, masks=(),
                    batch_rows: int = BATCH_ROWS, progress=None) -> tuple[dict[str, torch.Tensor], int]:
    """Scores of the prompt ids (1, pos) with each set of heads zero-ablated together, one batch row a set.

    Returns (name -> (n_sets,) in the order of `sets`, forward passes) as sweep.batched_scores does:
    the metrics of metrics.batch_scores against row 0 of the same pass (the clean run), that row's
    values as "clean_<metric>", and "clean_logits" (d_vocab,) from the first pass.
    progress(done, total) after each pass.
    """
    sets = [tuple(s) for s in sets]
    if not sets or any(not s for s in sets):
        raise ValueError("head_set_scores needs non-empty sets of heads")
    for s in sets:
        for ref in s:
            ref.check(handle.arch)
    rows_per_pass = max(1, min(batch_rows, TOKEN_BUDGET // ids.shape[1]) - 1)  # and the clean row
    order = sorted(range(len(sets)), key=lambda i: min(ref.layer for ref in sets[i]))
    chunks = [order[k:k + rows_per_pass] for k in range(0, len(order), rows_per_pass)]
    base = mask_fns(tuple(masks))
    parts, clean_logits = [], None
    for done, rows in enumerate(chunks):
        start, table = _chunk_table(handle, [sets[i] for i in rows])
        batch_ids = ids if start > 0 else ids.expand(len(rows) + 1, -1)
        logits = forward_last(handle, batch_ids, merge_fns(base, table))
        assert logits.shape[0] == len(rows) + 1, f"batch widened to {logits.shape[0]} rows, expected {len(rows) + 1}"
        parts.append(with_clean(logits, 1, target))
        clean_logits = logits[0] if clean_logits is None else clean_logits
        if progress:
            progress(done + 1, len(chunks))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    merged = {k: torch.cat([p[k] for p in parts])[inverse.to(parts[0][k].device)] for k in parts[0]}
    merged["clean_logits"] = clean_logits
    return merged, len(chunks)


# ---- pairs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairEffect:
    """Two heads ablated together, against the sum of their single effects."""

    a: HeadRef
    b: HeadRef
    joint_effect: float  # metric change with both ablated, mean over prompts
    joint_std: float  # spread of the joint effect over prompts (0 for one prompt)
    sum_of_singles: float  # verified effect of a + verified effect of b
    interaction: float  # joint_effect - sum_of_singles
    label: str  # "redundant" (joint weaker than the sum), "synergistic" (stronger) or "additive"


def choose_pairs(heads: list[HeadRef], effects: dict[HeadRef, float], limit: int) -> list[tuple[HeadRef, HeadRef]]:
    """Up to `limit` pairs among `heads`, the pairs of the strongest single effects first."""
    pairs = list(itertools.combinations(heads, 2))
    pairs.sort(key=lambda p: (-(abs(effects[p[0]]) + abs(effects[p[1]])), p))
    return pairs[:max(0, limit)]


def pair_label(joint: float, e_a: float, e_b: float, tolerance: float = ADDITIVE_TOLERANCE) -> str:
    """redundant / synergistic / additive: how the joint effect compares with the sum of the singles.

    The comparison is along the direction of the sum: a joint effect further from zero than the sum
    is synergy, nearer (or past zero) is redundancy; within `tolerance` x (|e_a| + |e_b|) it is additive.
    """
    total = e_a + e_b
    excess = (joint - total) * (1.0 if total >= 0 else -1.0)
    if abs(joint - total) <= tolerance * (abs(e_a) + abs(e_b)):
        return "additive"
    return "synergistic" if excess > 0 else "redundant"


def pair_effect(a: HeadRef, b: HeadRef, joint: np.ndarray, e_a: float, e_b: float) -> PairEffect:
    """joint (prompt,): the pair's effect on each prompt."""
    mean = float(np.mean(joint))
    return PairEffect(a=a, b=b, joint_effect=mean, joint_std=float(np.std(joint)), sum_of_singles=e_a + e_b,
                      interaction=mean - (e_a + e_b), label=pair_label(mean, e_a, e_b))


# ---- random baseline ---------------------------------------------------------------------------


def random_head_sets(pool: list[HeadRef], size: int, draws: int, seed: int) -> list[HeadSet]:
    """`draws` sets of `size` distinct heads from `pool`, drawn with numpy's generator seeded by `seed`.

    The same pool, size, draws and seed always give the same sets. Each set is sorted.
    """
    if not 0 < size <= len(pool):
        raise ValueError(f"cannot draw {size} heads from a pool of {len(pool)}")
    rng = np.random.default_rng(seed)
    pool = sorted(pool)
    return [tuple(sorted(pool[i] for i in rng.choice(len(pool), size=size, replace=False))) for _ in range(draws)]


# ---- edges ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    """A sender head in an earlier layer composing into a receiver head in a later one."""

    sender: HeadRef
    receiver: HeadRef
    weight: float  # max(q, k, v): see EDGE_WEIGHT
    kind: str  # which of q / k / v is the largest
    q: float  # Q-composition score, in [0, 1]
    k: float
    v: float


def circuit_edges(arch: Architecture, heads) -> list[Edge]:
    """Edges between every two heads of `heads` in different layers, weighted by composition scores.

    Ordered by weight, largest first.
    """
    by_layer: dict[int, list[int]] = defaultdict(list)
    for ref in sorted(set(heads)):
        by_layer[ref.layer].append(ref.head)
    layers = sorted(by_layer)
    cache: dict = {}
    edges = []
    for la, lb in itertools.combinations(layers, 2):
        scores = composition_scores(arch, la, lb, cache, heads_a=by_layer[la], heads_b=by_layer[lb])
        for i, ha in enumerate(by_layer[la]):
            for j, hb in enumerate(by_layer[lb]):
                parts = {kind: float(scores[kind][i, j]) for kind in ("q", "k", "v")}
                kind = max(parts, key=parts.get)
                edges.append(Edge(HeadRef(la, ha), HeadRef(lb, hb), parts[kind], kind, **parts))
    edges.sort(key=lambda e: (-e.weight, e.sender, e.receiver))
    return edges
