"""Build an attribution graph: capture, adjacency, influence, pruning, claims, supernodes.

>>> g = build_graph(handle, "The capital of Australia is the city of", " Sydney", " Canberra")
>>> g.completeness_error < 1e-4, len(g.nodes), g.rho
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..arch.spec import feature_masks, normalize_masks
from ..common.errors import BadInput
from ..interventions.metrics import Target, resolve_target
from ..model.loading import ModelHandle
from ..model.tokens import encode_prompt, token_strings
from .adjacency import Adjacency, build_adjacency, check_size
from .claims import CLAIM_NODES, check_claims
from .frozen import capture_run, parts_of
from .graph import MAX_POOL, POOL_THRESHOLD, AttributionGraph, Node, with_thresholds
from .prune import cumulative_scores, graph_scores, influence
from .supernodes import group_by_direction


def graph_target(handle: ModelHandle, target: str, contrast: str | None = None) -> Target:
    """The target (and contrast) as single tokens; a text of several tokens is refused, not cut."""
    for name, text in (("target", target), ("contrast", contrast)):
        if text is None or (name == "contrast" and not text):
            continue
        if not text:
            raise BadInput("the target token is empty: give the token whose logit the graph explains")
        ids = handle.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            pieces = token_strings(handle, ids)
            raise BadInput(f"{name} {text!r} is {len(ids)} tokens {pieces}: a graph explains one token's logit, "
                           "give a single token (mind the leading space)")
    return resolve_target(handle, target, contrast or None)


def _node_ids(adj: Adjacency, ids: list[int], target_id: int) -> list[str]:
    out = []
    for kind, layer, head, pos in zip(adj.kinds, adj.layers.tolist(), adj.heads.tolist(), adj.positions.tolist()):
        if kind == "token":
            out.append(f"E_{ids[pos]}_{pos}")
        elif kind == "head":
            out.append(f"{layer}_h{head}_{pos}")
        elif kind == "mlp":
            out.append(f"{layer}_mlp_{pos}")
        elif kind == "feature":
            out.append(f"{layer}_{int(adj.features[len(out)])}_{pos}")
        elif kind == "error":
            out.append(f"{layer}_err_{pos}")
        else:
            out.append(f"{layer + 1}_{target_id}_{pos}")
    return out


def _pool(infl: torch.Tensor, cumulative: torch.Tensor, kinds) -> tuple[list[int], float]:
    """Indices (topological order) of the nodes carrying POOL_THRESHOLD of the influence, at most
    MAX_POOL of them, tokens and the output always; and the node threshold they cover exactly."""
    order = torch.argsort(infl, descending=True).tolist()
    taken, coverage = [], 0.0
    for i in order:
        if len(taken) >= MAX_POOL or coverage >= POOL_THRESHOLD or infl[i] <= 0:
            break
        taken.append(i)
        coverage = float(cumulative[i])
    always = [i for i, k in enumerate(kinds) if k in ("token", "logit")]
    return sorted(set(taken) | set(always)), min(coverage, POOL_THRESHOLD) if taken else 0.0


def build_graph(handle: ModelHandle, prompt: str, target: str, contrast: str | None = None, masks=(),
                node_threshold: float = 0.8, edge_threshold: float = 0.98, claims: int = CLAIM_NODES,
                transcoders: dict | None = None) -> AttributionGraph:
    """The attribution graph of the next token after `prompt`, explaining logit(target) (- logit(contrast)).

    transcoders: layer -> a transcoder (features.sae.TopKSAE) whose active features and error nodes
    replace that layer's MLP blocks. Refuses an unsupported family (UnsupportedModel), an empty prompt,
    a prompt over the size limit (adjacency.max_tokens), a target or contrast of several tokens, a
    transcoder whose sites are not that layer's MLP input and output (BadInput).
    """
    parts_of(handle)
    masks = normalize_masks(masks, handle.arch)
    if features := feature_masks(masks):  # an SAE's edit is not linear in the stream: the graph would not add up
        raise BadInput(f"a graph cannot hold quarantined features yet ({', '.join(m.feature for m in features)}): "
                       "lift them, or build it on the raw model")
    ids, warnings = encode_prompt(handle, prompt)
    check_size(handle, ids.shape[1])
    tgt = graph_target(handle, target, contrast)
    seconds = []
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        seconds.append((name, now - clock))
        clock = now

    run = capture_run(handle, ids, tgt, masks)
    lap("forward pass (capture)")
    adj = build_adjacency(handle, run, transcoders)
    lap("adjacency (backward passes and edge products)")
    n = adj.layout.n_nodes
    weights = torch.zeros(n)
    weights[-1] = 1.0
    infl = influence(adj.matrix, weights, adj.layout.levels())
    cumulative = cumulative_scores(infl)
    replacement, completeness = graph_scores(adj.matrix, adj.kinds, infl)
    errors = adj.completeness_errors()
    lap("influence and scores")

    prompt_ids = run.ids.tolist()
    tokens = token_strings(handle, prompt_ids)
    names = _node_ids(adj, prompt_ids, tgt.id)
    kinds, values, layers = adj.kinds, adj.values.tolist(), adj.layers.tolist()
    heads, positions = adj.heads.tolist(), adj.positions.tolist()
    features, activations = adj.features.tolist(), adj.activations.tolist()
    infl_list, cum_list = infl.tolist(), cumulative.tolist()

    def node(i: int) -> Node:
        kind = kinds[i]
        return Node(id=names[i], kind=kind, layer=None if kind == "token" else layers[i],
                    head=heads[i] if kind == "head" else None, feature=features[i] if kind == "feature" else None,
                    position=positions[i], token=tgt.token if kind == "logit" else tokens[positions[i]],
                    value=values[i], influence=infl_list[i], cumulative=cum_list[i], activation=activations[i])

    pool, coverage = _pool(infl, cumulative, adj.kinds)
    index = torch.tensor(pool)
    directions = torch.zeros(len(pool), adj.writes.shape[1])
    directions[:-1] = torch.nn.functional.normalize(adj.writes[index[:-1]], dim=-1)
    inputs = torch.nonzero(adj.matrix[-1]).flatten().tolist()
    slot_writes = {names[i]: adj.writes[i].clone() for i in pool if adj.kinds[i] in ("feature", "error")}
    worst = int(errors.argmax())
    graph = AttributionGraph(
        model=handle.name, fingerprint=handle.fingerprint, prompt=prompt, prompt_tokens=tuple(tokens),
        prompt_ids=tuple(prompt_ids), target=tgt.token, target_id=tgt.id, contrast=tgt.contrast_token,
        contrast_id=tgt.contrast_id, output_value=run.output, n_layers=handle.arch.n_layers, n_nodes=n,
        n_edges=adj.count_edges(), completeness_error=float(errors[-1]),
        worst_node_error=float(errors[worst]), worst_node=names[worst], output_constant=float(adj.constants[-1]),
        replacement_score=replacement, completeness_score=completeness,
        logit_inputs=tuple((node(i), float(adj.matrix[-1, i])) for i in inputs),
        pool=tuple(node(i) for i in pool), pool_matrix=adj.matrix[index][:, index].numpy().astype(np.float32),
        pool_directions=directions.numpy(), pool_coverage=coverage, influence_total=float(infl.sum()),
        node_threshold=node_threshold, edge_threshold=edge_threshold, masks=masks,
        warnings=tuple(warnings) + tgt.warnings)
    del adj
    graph = with_thresholds(graph, min(node_threshold, coverage), edge_threshold)
    lap("pruning")
    found, rho = check_claims(handle, ids, graph.nodes, tgt, masks, claims, slot_writes)
    lap(f"claims checked by ablation ({len(found)} ablations, one batched forward pass)")
    graph = _replace(graph, claims=found, rho=rho)
    return _replace(graph, supernodes=group_by_direction(graph), seconds=tuple(seconds))


def _replace(graph: AttributionGraph, **changes) -> AttributionGraph:
    import dataclasses

    return dataclasses.replace(graph, **changes)
