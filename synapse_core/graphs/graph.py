"""The plain attribution-graph object the front end reads, its re-pruning and its exports.

An AttributionGraph keeps the pruned nodes and edges, every direct input of the output (so anyone
can add them up), the numbers that say how far to trust it, and a *pool*: the nodes that carry
POOL_THRESHOLD of the influence (tokens and the output always) with the adjacency between them, from
which `with_thresholds` re-prunes at any node threshold up to `pool_coverage` without the model.
Exports: circuit-tracer's graph JSON (its front end and Neuronpedia's read it) and CSV of nodes and
edges.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass

import numpy as np
import torch

from ..common.errors import BadInput
from .prune import check_thresholds, keep_nodes, prune

POOL_THRESHOLD = 0.95  # influence share the pool covers: the node-threshold slider's upper end
MAX_POOL = 1500  # pool nodes at most (its adjacency: 1500^2 float32 = 9 MB)


@dataclass(frozen=True)
class Node:
    """One node of the graph."""

    id: str  # circuit-tracer style: E_<vocab>_<pos>, <layer>_h<head>_<pos>, <layer>_mlp_<pos>, <layer>_<feature>_<pos>,
    # <layer>_err_<pos>, <n_layers+1>_<vocab>_<pos> (the output)
    kind: str  # token | head | mlp | feature | error | logit
    layer: int | None  # None for tokens
    head: int | None  # heads only
    feature: int | None  # transcoder features only
    position: int  # token position
    token: str  # the prompt token at that position (the target token for the output)
    value: float  # total effect on the output in the frozen model (the output: its logit or logit difference)
    influence: float  # w ((I - Â)^-1 - I) at this node, w = 1 at the output: circuit-tracer's node influence, the
    # summed products of input shares along every path from it to the output (not a share of a total)
    cumulative: float  # share of the summed influence carried by this node and every more influential one
    # (what circuit-tracer's JSON calls "influence")
    activation: float = 0.0  # a transcoder feature's activation on the prompt (0 for other kinds)

    @property
    def label(self) -> str:
        if self.kind == "token":
            return f"{self.token!r}@{self.position}"
        if self.kind == "head":
            return f"{self.layer}.{self.head}@{self.position}"
        if self.kind == "logit":
            return "output"
        if self.kind == "feature":
            return f"{self.layer}/{self.feature}@{self.position}"
        return f"{self.kind} {self.layer}@{self.position}"


@dataclass(frozen=True)
class Edge:
    source: str  # node id
    target: str  # node id
    weight: float  # direct effect: the target's read of the source's write


@dataclass(frozen=True)
class Claim:
    """What the graph claims zero-ablating a node does to the output, and what really ablating it does."""

    node: str  # node id
    claimed: float  # frozen model: minus the node's value (exact there)
    measured: float  # the real model, the node's output zeroed at its position: output after - before


@dataclass(frozen=True)
class Supernode:
    name: str
    members: tuple[str, ...]  # node ids


@dataclass(frozen=True, eq=False)
class AttributionGraph:
    """An attribution graph of one prompt's local replacement model, pruned."""

    model: str
    fingerprint: str
    prompt: str
    prompt_tokens: tuple[str, ...]
    prompt_ids: tuple[int, ...]
    target: str  # the target token as decoded
    target_id: int
    contrast: str | None  # the contrast token as decoded, None for a plain logit
    contrast_id: int | None
    output_value: float  # logit(target) - logit(contrast), or logit(target): the real model
    n_layers: int
    n_nodes: int  # nodes of the whole graph
    n_edges: int  # nonzero edges of the whole graph
    completeness_error: float  # |direct inputs of the output + its constant - output_value|
    worst_node_error: float  # the largest |incoming edges + constant - value| over all nodes
    worst_node: str  # its id
    output_constant: float  # the output's constant: biases no node explains
    replacement_score: float
    completeness_score: float
    logit_inputs: tuple[tuple[Node, float], ...]  # every node with a direct edge into the output, and its weight
    pool: tuple[Node, ...]  # candidate nodes in topological order, the output last
    pool_matrix: np.ndarray  # (pool, pool) float32 adjacency [target, source]
    pool_directions: np.ndarray  # (pool, d_model) float32 unit output directions (zeros for the output)
    pool_coverage: float  # node thresholds up to this are exact from the pool
    influence_total: float  # the whole graph's summed node influence: Node.cumulative's denominator
    node_threshold: float
    edge_threshold: float
    nodes: tuple[Node, ...] = ()  # kept nodes
    edges: tuple[Edge, ...] = ()  # kept edges
    claims: tuple[Claim, ...] = ()
    rho: float | None = None  # Spearman's rho between claimed and measured, over the claims
    supernodes: tuple[Supernode, ...] = ()
    seconds: tuple[tuple[str, float], ...] = ()  # where the time went
    masks: tuple = ()  # heads masked in every run
    warnings: tuple[str, ...] = ()

    @property
    def output_label(self) -> str:
        if self.contrast is None:
            return f"logit({self.target!r})"
        return f"logit({self.target!r}) - logit({self.contrast!r})"

    def node(self, node_id: str) -> Node:
        for node in self.pool:
            if node.id == node_id:
                return node
        raise BadInput(f"node {node_id!r} is not in the graph's pool of {len(self.pool)} nodes")

    def top_edges(self, node_id: str, k: int = 5) -> tuple[list[tuple[Node, float]], list[tuple[Node, float]]]:
        """The k largest incoming and outgoing edges (by |weight|) of a pool node, within the pool."""
        index = {n.id: i for i, n in enumerate(self.pool)}
        if node_id not in index:
            raise BadInput(f"node {node_id!r} is not in the graph's pool of {len(self.pool)} nodes")
        i = index[node_id]

        def top(row):
            order = np.argsort(-np.abs(row))[:k]
            return [(self.pool[j], float(row[j])) for j in order if row[j] != 0]

        return top(self.pool_matrix[i]), top(self.pool_matrix[:, i])

    def headline(self) -> str:
        return (f"{len(self.nodes)} nodes, {len(self.edges)} edges \u00b7 {self.output_label} = {self.output_value:+.3f} "
                f"\u00b7 completeness error {self.completeness_error:.1e}")

    def to_json(self) -> dict:
        """The CLI's --json payload: the pruned graph, the output's direct inputs and the scores."""
        return {
            "model": self.model, "prompt": self.prompt, "prompt_tokens": list(self.prompt_tokens),
            "target": self.target, "contrast": self.contrast, "output": self.output_label,
            "output_value": self.output_value, "output_constant": self.output_constant,
            "nodes": [_node_json(n) for n in self.nodes],
            "edges": [dataclasses.asdict(e) for e in self.edges],
            "logit_inputs": [{"id": n.id, "kind": n.kind, "layer": n.layer, "head": n.head, "position": n.position, "weight": w}
                             for n, w in self.logit_inputs],
            "completeness_error": self.completeness_error, "worst_node_error": self.worst_node_error,
            "worst_node": self.worst_node, "replacement_score": self.replacement_score,
            "completeness_score": self.completeness_score, "n_nodes": self.n_nodes, "n_edges": self.n_edges,
            "node_threshold": self.node_threshold, "edge_threshold": self.edge_threshold,
            "claims": [dataclasses.asdict(c) for c in self.claims], "rho": self.rho,
            "supernodes": [{"name": s.name, "members": list(s.members)} for s in self.supernodes],
            "seconds": dict(self.seconds), "warnings": list(self.warnings),
        }

    def csv_rows(self) -> list[dict]:
        """History's CSV export: the nodes table."""
        return [_node_json(n) for n in self.nodes]


def _node_json(n: Node) -> dict:
    return {"id": n.id, "kind": n.kind, "layer": n.layer, "head": n.head, "feature": n.feature, "position": n.position,
                "token": n.token, "value": n.value, "influence": n.influence, "cumulative": n.cumulative}


def with_thresholds(graph: AttributionGraph, node_threshold: float, edge_threshold: float) -> AttributionGraph:
    """The graph pruned again at other thresholds, from its pool (circuit-tracer's prune_graph)."""
    check_thresholds(node_threshold, edge_threshold)
    if node_threshold > graph.pool_coverage + 1e-9:
        raise BadInput(f"node threshold {node_threshold} is above {graph.pool_coverage:.2f}, the share of influence "
                       "the stored candidate nodes cover: build the graph again for more")
    kinds = tuple(n.kind for n in graph.pool)
    cumulative = torch.tensor([n.cumulative for n in graph.pool])
    share = torch.tensor([n.influence for n in graph.pool])
    mask = keep_nodes(cumulative, share / max(graph.influence_total, 1e-30), kinds, node_threshold)
    pruned = prune(torch.from_numpy(graph.pool_matrix), mask, kinds, edge_threshold)
    nodes = tuple(n for n, k in zip(graph.pool, pruned.node_mask.tolist()) if k)
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    edges = tuple(Edge(graph.pool[s].id, graph.pool[t].id, float(graph.pool_matrix[t, s]))
                  for t, s in zip(targets.tolist(), sources.tolist()))
    return dataclasses.replace(graph, nodes=nodes, edges=edges, node_threshold=node_threshold,
                               edge_threshold=edge_threshold)


def circuit_tracer_json(graph: AttributionGraph, slug: str = "synapse-graph") -> dict:
    """The graph in circuit-tracer's front-end format (metadata, qParams, nodes, links).

    Heads and MLP blocks have no circuit-tracer type of their own: they appear with feature_type
    "attention head" and "mlp block", feature = the head index (-1 for an MLP).
    """
    types = {"token": "embedding", "head": "attention head", "mlp": "mlp block", "feature": "cross layer transcoder",
             "error": "mlp reconstruction error", "logit": "logit"}
    nodes = []
    for n in graph.nodes:
        layer = "E" if n.kind == "token" else str(n.layer)
        feature = {"token": n.position, "head": n.head, "feature": n.feature, "logit": graph.target_id}.get(n.kind, -1)
        nodes.append({
            "node_id": n.id, "feature": feature, "layer": layer, "ctx_idx": n.position, "feature_type": types[n.kind],
            "token_prob": 0.0, "is_target_logit": n.kind == "logit", "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": n.id,
            "clerp": f"Output {graph.output_label} = {graph.output_value:.3f}" if n.kind == "logit" else n.label,
            "influence": n.cumulative, "activation": n.activation if n.kind == "feature" else n.value})
    links = [dataclasses.asdict(e) for e in graph.edges]
    return {
        "metadata": {"slug": slug, "scan": graph.model, "transcoder_list": [], "prompt_tokens": list(graph.prompt_tokens),
                     "prompt": graph.prompt, "node_threshold": graph.node_threshold,
                     "info": {"output": graph.output_label, "completeness_error": graph.completeness_error,
                              "replacement_score": graph.replacement_score,
                              "completeness_score": graph.completeness_score}},
        "qParams": {"pinnedIds": [], "supernodes": [[s.name, *s.members] for s in graph.supernodes],
                    "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def nodes_csv(graph: AttributionGraph) -> str:
    return _csv([_node_json(n) for n in graph.nodes], list(_node_json(graph.pool[-1])))


def edges_csv(graph: AttributionGraph) -> str:
    return _csv([dataclasses.asdict(e) for e in graph.edges], ["source", "target", "weight"])


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def dump_json(graph: AttributionGraph) -> str:
    return json.dumps(circuit_tracer_json(graph), indent=1)
