"""Claims checked by intervention: what the graph says ablating a node does, against the real model.

In the frozen model zero-ablating a node moves the output by exactly minus its value. The real model
is not frozen: removing a head's output at one position also changes later attention patterns, norm
denominators and MLP gates. Each of the most influential heads and MLP blocks is zeroed at its
position in the real model (a transcoder feature or error node has its write taken out of the MLP
output at its position), the masks on, and the measured change in the output is set beside the
claim; Spearman's rho over them says how far the graph's ranking holds. All ablations share one
forward pass: batch row 0 is the clean run, row r + 1 carries ablation r.
"""
from __future__ import annotations

import torch

from ..analysis.discovery import spearman
from ..arch.spec import Intervention
from ..hooks.masking import mask_fns, merge_fns
from ..interventions.metrics import Target
from ..interventions.ops import forward_last, prepare
from ..model.loading import ModelHandle
from .graph import Claim, Node

CLAIM_NODES = 20  # nodes checked: the top 20 by influence, as the page and the benchmark report rho over


def _metric(logits: torch.Tensor, target: Target) -> float:
    value = logits[target.id]
    if target.has_contrast:
        value = value - logits[target.contrast_id]
    return float(value)


def _subtract(position: int, vector: torch.Tensor):
    def fn(x):  # mlp.out (batch, pos, d_model): the node's write taken out at its position
        out = x.clone()
        out[:, position] -= vector.to(device=x.device, dtype=x.dtype)
        return out

    return fn


def intervention_of(node: Node) -> Intervention:
    """The real-model ablation of a node: its output zeroed at its position."""
    if node.kind == "head":
        return Intervention(node.layer, "attn.head", "zero", node.head, (node.position,))
    if node.kind == "mlp":
        return Intervention(node.layer, "mlp", "zero", None, (node.position,))
    raise ValueError(f"no real-model ablation for a {node.kind} node")


def check_claims(handle: ModelHandle, ids: torch.Tensor, nodes, target: Target, masks=(),
                 top: int = CLAIM_NODES, slot_writes: dict | None = None) -> tuple[tuple[Claim, ...], float | None]:
    """Claimed vs measured effect of ablating the `top` most influential heads, MLP blocks, transcoder
    features and error nodes: a head or MLP block zeroed at its position; a feature or error node's
    write (slot_writes: node id -> (d_model,)) subtracted from the MLP output at its position.

    ids (1, pos). Returns the claims, most influential first, and Spearman's rho between claimed and
    measured (None with fewer than three claims, or when either side is constant).
    """
    slot_writes = slot_writes or {}
    chosen = sorted((n for n in nodes if n.kind in ("head", "mlp") or n.id in slot_writes),
                    key=lambda n: -n.influence)[:max(0, top)]
    if not chosen:
        return (), None
    blocks = [n for n in chosen if n.kind in ("head", "mlp")]
    by_node = {}
    if blocks:
        prepared = prepare(handle, ids, [intervention_of(n) for n in blocks], masks=masks)
        by_node = dict(zip((n.id for n in blocks), zip(prepared.keys, prepared.fns)))
    rows: dict = {}
    for row, n in enumerate(chosen, start=1):
        key, fn = by_node.get(n.id) or ((n.layer, "mlp.out"), _subtract(n.position, slot_writes[n.id]))
        rows.setdefault(key, []).append((row, fn))
    table = {key: [_per_row(items)] for key, items in rows.items()}
    logits = forward_last(handle, ids.expand(len(chosen) + 1, -1), merge_fns(mask_fns(tuple(masks)), table))
    clean = _metric(logits[0], target)
    claims = tuple(Claim(node=node.id, claimed=-node.value, measured=_metric(logits[row], target) - clean)
                   for row, node in enumerate(chosen, start=1))
    rho = spearman([c.claimed for c in claims], [c.measured for c in claims])
    return claims, rho


def _per_row(items):
    def fn(x):  # each (row, site function) acts on its own batch row only
        out = x.clone()
        for row, f in items:
            out[row:row + 1] = f(x[row:row + 1])
        return out

    return fn
