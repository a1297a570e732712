"""Influence, pruning and scores of an attribution graph, as circuit-tracer defines them.

A is the adjacency (rows targets, columns sources) and Â its row-normalised absolute value: the
share of each target's input that each source carries. A node's influence on the output is
w (Â + Â² + ...) = w ((I - Â)^-1 - I), w = 1 at the output. Nodes sit in levels with no edges inside
one (tokens, layer 0's heads, layer 0's MLPs, ...), so Â is block lower triangular and the series is
summed exactly by back-substitution over the levels, each entry of A read once: a triangular solve,
never an explicit inverse. Pruning keeps the nodes carrying `node_threshold` of the total influence
(tokens and the output always), then the edges carrying `edge_threshold` of the edge influence
Â_pruned * (influence + w), then drops nodes left without an outgoing edge (or, for computed nodes,
an incoming one) until nothing changes.

Scores (circuit-tracer's compute_graph_scores): the replacement score is the tokens' share of the
influence that reaches the output from sources (tokens and error nodes); the completeness score is
the share of each node's normalised input that comes from non-error nodes, averaged with weights
influence + w. With MLP blocks as whole nodes there are no error nodes and both scores are 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common.errors import BadInput

_CHUNK = 2048  # rows of |A| made at a time: no full-size copy of a large adjacency


def row_scales(matrix: torch.Tensor) -> torch.Tensor:
    """1 / (row sums of |A|) (node,), rows without input clamped, as circuit-tracer's normalize_matrix."""
    sums = torch.cat([matrix[r:r + _CHUNK].abs().sum(1) for r in range(0, matrix.shape[0], _CHUNK)])
    return 1.0 / sums.clamp_min(1e-10)


def influence(matrix: torch.Tensor, weights: torch.Tensor, levels: tuple[int, ...] | None = None) -> torch.Tensor:
    """w ((I - Â)^-1 - I) (node,) for a strictly lower-triangular A (node, node).

    levels: boundaries of groups without edges inside them; None treats every node as its own level
    (a small matrix: a Neumann series, at most n products).
    """
    scales = row_scales(matrix)
    n = matrix.shape[0]
    if levels is None:
        norm = matrix.abs() * scales[:, None]
        current = weights @ norm
        total = current.clone()
        for _ in range(n):
            if not bool(current.any()):
                return total
            current = current @ norm
            total += current
        raise BadInput("the adjacency has a cycle: influence does not converge")
    # Levels from the output down: a level's targets are all in later levels, so once those have passed
    # on their share its w + influence is final, and it passes its own share to every earlier node. Each
    # step reads one contiguous block of rows of A.
    out = torch.zeros(n)
    for i in reversed(range(1, len(levels) - 1)):
        lo, hi = levels[i], levels[i + 1]
        reach = (weights[lo:hi] + out[lo:hi]) * scales[lo:hi]
        if bool(reach.any()):
            out[:lo] += reach @ matrix[lo:hi, :lo].abs()
    return out


def find_threshold(scores: torch.Tensor, threshold: float) -> float:
    """The score above which the highest scores carry `threshold` of the total."""
    ordered = torch.sort(scores.flatten(), descending=True).values
    cumulative = torch.cumsum(ordered, 0) / ordered.sum().clamp_min(1e-30)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(threshold))), len(ordered) - 1)
    return float(ordered[index])


def cumulative_scores(node_influence: torch.Tensor) -> torch.Tensor:
    """(node,) the share of total influence carried by this node and every node above it."""
    ordered, order = torch.sort(node_influence, descending=True)
    out = torch.empty_like(node_influence)
    out[order] = torch.cumsum(ordered, 0) / ordered.sum().clamp_min(1e-30)
    return out


@dataclass(frozen=True, eq=False)
class Pruned:
    """Which nodes and edges a pruning keeps."""

    node_mask: torch.Tensor  # (node,) bool
    edge_mask: torch.Tensor  # (node, node) bool, [target, source]
    edge_scores: torch.Tensor  # (node, node) edge influence of the node-pruned graph


def check_thresholds(node_threshold: float, edge_threshold: float) -> None:
    for name, value in (("node threshold", node_threshold), ("edge threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise BadInput(f"{name} {value} must be between 0 and 1")


def keep_nodes(cumulative: torch.Tensor, share: torch.Tensor, kinds: tuple[str, ...], threshold: float) -> torch.Tensor:
    """(node,) bool: the nodes carrying `threshold` of the influence (the node that crosses it included),
    tokens and the output always. cumulative: cumulative_scores; share: each node's own share."""
    always = torch.tensor([k in ("token", "logit") for k in kinds])
    return ((cumulative - share) < threshold) | always


def prune(matrix: torch.Tensor, node_mask: torch.Tensor, kinds: tuple[str, ...], edge_threshold: float = 0.98) -> Pruned:
    """Prune the edges of a (small) graph after its node pruning (keep_nodes). matrix (node, node).

    The output is the last node (kind "logit"); tokens and the output are always kept.
    """
    check_thresholds(0.0, edge_threshold)
    n = matrix.shape[0]
    always = torch.tensor([k in ("token", "logit") for k in kinds])
    computed = torch.tensor([k in ("head", "mlp", "feature") for k in kinds])
    node_mask = node_mask | always
    kept = matrix * node_mask[:, None] * node_mask[None, :]
    weights = torch.zeros(n)
    weights[-1] = 1.0
    scales = row_scales(kept)
    edge_scores = kept.abs() * scales[:, None] * (influence(kept, weights) + weights)[:, None]
    edge_mask = (edge_scores >= find_threshold(edge_scores, edge_threshold)) & (kept != 0)
    while True:
        before = node_mask.clone()
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        node_mask &= always | edge_mask.any(0)  # every kept node but tokens and the output sends an edge
        node_mask &= ~computed | edge_mask.any(1)  # computed nodes also receive one
        if torch.equal(node_mask, before):
            return Pruned(node_mask=node_mask, edge_mask=edge_mask, edge_scores=edge_scores)


def graph_scores(matrix: torch.Tensor, kinds: tuple[str, ...], node_influence: torch.Tensor) -> tuple[float, float]:
    """(replacement score, completeness score) of a whole graph, as circuit-tracer computes them.
    node_influence: influence(matrix, w) with w = 1 at the output (the last node)."""
    n = matrix.shape[0]
    weights = torch.zeros(n)
    weights[-1] = 1.0
    tokens = torch.tensor([k == "token" for k in kinds])
    errors = torch.tensor([k == "error" for k in kinds])
    token_part, error_part = float(node_influence[tokens].sum()), float(node_influence[errors].sum())
    replacement = token_part / max(token_part + error_part, 1e-30)
    if bool(errors.any()):
        error_share = matrix[:, errors].abs().sum(1) * row_scales(matrix)
    else:
        error_share = torch.zeros(n)
    reach = node_influence + weights
    completeness = float(((1 - error_share) * reach).sum() / reach.sum())
    return replacement, completeness
