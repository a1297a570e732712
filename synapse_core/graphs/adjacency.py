"""The exact adjacency of one prompt's local replacement model (frozen.py).

Nodes, in topological order (every edge goes from a lower index to a higher one):

    tokens (pos)  |  layer 0: heads (pos x head), MLP (pos)  |  layer 1 ...  |  the output

A node's *value* is its total effect on the output in the frozen model: its write into the residual
stream times the frozen model's gradient of the output there (one backward pass gives every such
gradient). Because the frozen model is linear, zero-ablating a node in it moves the output by exactly
minus its value, and the value is a linear read of the residual stream the node reads:

    head (l, h, q):  value = sum_k P[h, q, k] * u_{q,h} . (s1[k] * x_l[k]),  u = W_V^T W_O^T g_h[l][q]
    MLP (l, p):      value = g_x[l+1][p] . down(a * up(s2 * h_l[p]))  ->  read R_p = VJP of that at h_l[p]
    output:          value = (s_f * u) . x_L[last]

The residual stream is the sum of the sources' writes (and the output projections' biases), so the
edge source -> target is the target's read of the source's write, and

    value(target) = sum of incoming edges + constant (its reads of the biases, and its own offsets)

exactly, up to float rounding: the completeness identity. Edges into heads cross positions through
the frozen pattern; edges into MLPs and the output stay at one position. The MLP reads come from one
batched backward pass per layer (every position at once); the head reads are the closed form of the
same vector-Jacobian product. MLP blocks are whole nodes here: transcoder features and their error
nodes would take an MLP block's place in the node list (features read through their encoder, an
error node has no incoming edges), which is the seam `Adjacency.kinds` leaves open.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common.errors import BadInput
from ..model.loading import ModelHandle
from .frozen import FrozenRun, frozen_mlp, head_keep, head_values, output_gradients

KINDS = ("token", "head", "mlp", "feature", "error", "logit")
MAX_ADJACENCY_BYTES = 3 * 2 ** 29  # 1.5 GiB: the dense float32 adjacency, the largest array a graph holds


@dataclass(frozen=True)
class Layout:
    """Where each node sits in the adjacency of a model with n_layers x n_heads on n_pos tokens."""

    n_layers: int
    n_heads: int
    n_pos: int

    @property
    def per_layer(self) -> int:
        return (self.n_heads + 1) * self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.n_pos + self.n_layers * self.per_layer + 1

    def head_start(self, layer: int) -> int:  # node (layer, head, q) = head_start + q * n_heads + head
        return self.n_pos + layer * self.per_layer

    def mlp_start(self, layer: int) -> int:  # node (layer, p) = mlp_start + p
        return self.head_start(layer) + self.n_heads * self.n_pos

    @property
    def output(self) -> int:
        return self.n_nodes - 1

    def levels(self) -> tuple[int, ...]:
        """Boundaries of the groups with no edges inside them: tokens, heads_0, mlp_0, ..., output."""
        cuts = [0, self.n_pos]
        for layer in range(self.n_layers):
            cuts += [self.mlp_start(layer), self.mlp_start(layer) + self.n_pos]
        return tuple(cuts + [self.n_nodes])


def max_tokens(n_layers: int, n_heads: int) -> int:
    """The longest prompt whose dense adjacency fits MAX_ADJACENCY_BYTES (4 bytes an entry)."""
    max_nodes = int((MAX_ADJACENCY_BYTES / 4) ** 0.5)
    return (max_nodes - 1) // (n_layers * (n_heads + 1) + 1)


def check_size(handle: ModelHandle, n_pos: int) -> Layout:
    arch = handle.arch
    layout = Layout(arch.n_layers, arch.n_heads, n_pos)
    limit = max_tokens(arch.n_layers, arch.n_heads)
    if n_pos > limit:
        n = layout.n_nodes
        raise BadInput(
            f"the prompt has {n_pos} tokens; attribution graphs of this model are limited to {limit}: its graph "
            f"would have {n} nodes ({arch.n_layers * (arch.n_heads + 1) + 1} a token), and the dense float32 "
            f"adjacency {4 * n * n / 2 ** 30:.1f} GiB, over the {MAX_ADJACENCY_BYTES / 2 ** 30:.1f} GiB budget")
    return layout


@dataclass(frozen=True, eq=False)
class Adjacency:
    """The whole graph of one prompt: every node and every direct effect. float32."""

    layout: Layout
    matrix: torch.Tensor  # (node, node) [target, source]: the target's read of the source's write
    values: torch.Tensor  # (node,) each node's total effect on the output; the output's own value last
    constants: torch.Tensor  # (node,) the part of each value no node explains (biases; a token's whole value)
    writes: torch.Tensor  # (node - 1, d_model) what each source writes into the residual stream
    kinds: tuple[str, ...]  # per node, one of KINDS
    layers: torch.Tensor  # (node,) int: layer (-1 for tokens, n_layers for the output)
    heads: torch.Tensor  # (node,) int: head index, -1 for others
    positions: torch.Tensor  # (node,) int: token position

    def completeness_errors(self) -> torch.Tensor:
        """(node,) |incoming edges + constant - value|: 0 up to float rounding when the graph is exact."""
        rows = torch.cat([self.matrix[r:r + 1024].double().sum(1) for r in range(0, self.matrix.shape[0], 1024)])
        return (rows + self.constants.double() - self.values.double()).abs().float()

    def count_edges(self) -> int:
        return sum(int(torch.count_nonzero(self.matrix[r:r + 1024])) for r in range(0, self.matrix.shape[0], 1024))


def _index(layout: Layout) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor, torch.Tensor]:
    n_pos, n_heads = layout.n_pos, layout.n_heads
    kinds, layers, heads, positions = ["token"] * n_pos, [-1] * n_pos, [-1] * n_pos, list(range(n_pos))
    for layer in range(layout.n_layers):
        for q in range(n_pos):
            for h in range(n_heads):
                kinds.append("head"), layers.append(layer), heads.append(h), positions.append(q)
        kinds += ["mlp"] * n_pos
        layers += [layer] * n_pos
        heads += [-1] * n_pos
        positions += list(range(n_pos))
    kinds.append("logit"), layers.append(layout.n_layers), heads.append(-1), positions.append(n_pos - 1)
    return tuple(kinds), torch.tensor(layers), torch.tensor(heads), torch.tensor(positions)


def build_adjacency(handle: ModelHandle, run: FrozenRun) -> Adjacency:
    """Every node's value, constant and incoming edges for one prompt's frozen model."""
    arch = handle.arch
    layout = check_size(handle, run.n_pos)
    n_pos, d_model = run.n_pos, arch.d_model
    g_x, g_h = output_gradients(handle, run)
    keep = head_keep(handle, run)
    weights = [arch.head_weights(layer) for layer in range(arch.n_layers)]
    w_o = [w["W_O"].detach().float() for w in weights]  # (head, d_model, d_head)
    w_v = [w["W_V"].detach().float() for w in weights]  # (head, d_head, d_model)

    n = layout.n_nodes
    writes = torch.empty(n - 1, d_model)
    values = torch.empty(n)
    writes[:n_pos] = run.x[0]
    values[:n_pos] = (g_x[0] * run.x[0]).sum(-1)
    for layer in range(arch.n_layers):
        hw = torch.einsum("qhd,hmd->qhm", run.z[layer], w_o[layer])  # (pos, head, d_model)
        start, mlp = layout.head_start(layer), layout.mlp_start(layer)
        writes[start:mlp] = hw.reshape(-1, d_model)
        values[start:mlp] = (hw * g_h[layer][:, None]).sum(-1).reshape(-1)
        writes[mlp:mlp + n_pos] = run.mlp_out[layer]
        values[mlp:mlp + n_pos] = (g_x[layer + 1] * run.mlp_out[layer]).sum(-1)
    values[-1] = run.output
    kinds, layers, heads, positions = _index(layout)
    src_pos = positions[:-1]

    matrix = torch.zeros(n, n)
    constants = torch.zeros(n)
    constants[:n_pos] = values[:n_pos]  # a token's value has no incoming edge: all of it is its own
    zero = torch.zeros(n_pos, d_model)
    bias = torch.zeros(d_model)  # output-projection biases written so far (the same at every position)
    with torch.no_grad():
        for layer in range(arch.n_layers):
            start, mlp = layout.head_start(layer), layout.mlp_start(layer)
            # heads: u (pos, head, d_model); edge = P[h, q, k] * u . (s1[k] * write)
            u = torch.einsum("qm,hmd->qhd", g_h[layer], w_o[layer])
            u = torch.einsum("qhd,hdm->qhm", u, w_v[layer]) * keep[layer][None, :, None]
            u = u.reshape(-1, d_model)
            probs = run.probs[layer].permute(1, 0, 2).reshape(-1, n_pos)  # (pos * head, key pos)
            scaled = writes[:start] * run.s_attn[layer][src_pos[:start]]
            matrix[start:mlp, :start] = (u @ scaled.T) * probs[:, src_pos[:start]]
            z0 = torch.einsum("hqk,khd->qhd", run.probs[layer], head_values(handle, layer, zero, run))
            own = (torch.einsum("qhd,hmd->qhm", z0, w_o[layer]) * g_h[layer][:, None]).sum(-1) * keep[layer]
            from_bias = ((u @ (run.s_attn[layer] * bias).T) * probs).sum(-1)
            constants[start:mlp] = own.reshape(-1) + from_bias
            out_bias = arch.out_proj[layer].bias
            if out_bias is not None:
                bias = bias + out_bias.detach().float()
            # MLP: one backward pass gives every position's read
            with torch.inference_mode(False), torch.enable_grad():
                h = (run.x[layer] + run.attn_out[layer]).clone().requires_grad_(True)
                (read,) = torch.autograd.grad(frozen_mlp(handle, layer, h, run), h, grad_outputs=g_x[layer + 1])
            end = mlp + n_pos
            same = src_pos[:mlp][None, :] == torch.arange(n_pos)[:, None]
            matrix[mlp:end, :mlp] = (read @ writes[:mlp].T) * same
            own = (frozen_mlp(handle, layer, zero, run) * g_x[layer + 1]).sum(-1)
            constants[mlp:end] = own + read @ bias
        read = run.s_final * run.readout
        last = src_pos == n_pos - 1
        matrix[-1, :-1] = (writes @ read) * last
        constants[-1] = read @ bias + run.readout_bias
    return Adjacency(layout=layout, matrix=matrix, values=values, constants=constants, writes=writes, kinds=kinds,
                     layers=layers, heads=heads, positions=positions)
