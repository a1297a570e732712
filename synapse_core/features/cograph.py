"""Graphs of features: co-occurrence among a set of features, PRISMA's knowledge graph (the
maximum spanning tree of their co-occurrence), and supernodes (features whose decoder directions
have cosine above a threshold, grouped; CircuitScope).

Co-occurrence is the Jaccard index of the held-out tokens two features fire on, as stored with the
SAE's statistics (each feature keeps its strongest co-occurring partners), so building a graph
reads files only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.errors import BadInput
from . import catalog
from .sae import load_sae
from .stats import FeatureStats

SUPERNODE_COSINE = 0.7


@dataclass(frozen=True)
class FeatureGraph:
    sae: str
    nodes: tuple[int, ...]  # feature indices
    edges: tuple[tuple[int, int, float], ...]  # (a, b, Jaccard), a < b, co-occurring pairs among the nodes
    tree: tuple[tuple[int, int, float], ...]  # maximum spanning forest of `edges`
    supernodes: tuple[tuple[int, ...], ...]  # groups of >= 2 nodes linked by decoder cosine > threshold
    threshold: float


def _find(parent: dict, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def _components(nodes, pairs) -> list[tuple[int, ...]]:
    parent = {n: n for n in nodes}
    for a, b in pairs:
        parent[_find(parent, a)] = _find(parent, b)
    groups: dict[int, list[int]] = {}
    for n in nodes:
        groups.setdefault(_find(parent, n), []).append(n)
    return sorted((tuple(sorted(g)) for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g))


def max_spanning_forest(nodes, edges) -> list[tuple[int, int, float]]:
    """Kruskal on weights from high to low: the heaviest edges that close no cycle."""
    parent = {n: n for n in nodes}
    out = []
    for a, b, w in sorted(edges, key=lambda e: (-e[2], e[0], e[1])):
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb:
            parent[ra] = rb
            out.append((a, b, w))
    return out


def feature_graph(sae: str, features: list[int], threshold: float = SUPERNODE_COSINE,
                  dirs: list[Path] | None = None) -> FeatureGraph:
    """The co-occurrence graph, its maximum spanning tree and the supernodes of `features` of `sae`."""
    if not 0 < threshold <= 1:
        raise BadInput(f"cosine threshold {threshold} must be in (0, 1]")
    info = catalog.find_sae(sae, dirs)
    nodes = tuple(dict.fromkeys(int(f) for f in features))
    for f in nodes:
        if not 0 <= f < info.d_sae:
            raise BadInput(f"feature {f} does not exist: {sae} has features 0-{info.d_sae - 1}")
    a = FeatureStats(info.path).arrays
    keep = set(nodes)
    weights: dict[tuple[int, int], float] = {}
    for f in nodes:
        for j, w in zip(a["cooc_idx"][f], a["cooc_jaccard"][f]):
            j, w = int(j), float(w)
            if j in keep and j != f and w > 0:
                key = (min(f, j), max(f, j))
                weights[key] = max(weights.get(key, 0.0), w)
    edges = tuple((x, y, w) for (x, y), w in sorted(weights.items()))
    W = load_sae(info.path, dtype="float32").W_dec.detach()[list(nodes)]  # (n, d_model)
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = W @ W.T
    close = [(nodes[i], nodes[j]) for i, j in torch.nonzero(torch.triu(cos, diagonal=1) > threshold).tolist()]
    return FeatureGraph(info.name, nodes, edges, tuple(max_spanning_forest(nodes, edges)),
                        tuple(_components(nodes, close)), threshold)
