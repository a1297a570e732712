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
same vector-Jacobian product. MLP blocks are whole nodes unless a transcoder replaces a layer's MLP
(frozen.py): then that layer's slot holds its active features, each reading its encoder row through
the frozen norm (value (g . d_f) a_f), and one error node a position (the MLP output the transcoder
misses: no incoming edges, all constant), so the sums stay exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common.errors import BadInput
from ..model.loading import ModelHandle
from .frozen import FrozenRun, freeze_transcoder, frozen_mlp, head_keep, head_values, output_gradients

KINDS = ("token", "head", "mlp", "feature", "error", "logit")
MAX_ADJACENCY_BYTES = 3 * 2 ** 29  # 1.5 GiB: the dense float32 adjacency, the largest array a graph holds


@dataclass(frozen=True)
class Layout:
    """Where each node sits in the adjacency of a model with n_layers x n_heads on n_pos tokens."""

    n_layers: int
    n_heads: int
    n_pos: int
    slots: tuple[int, ...] = ()  # nodes in each layer's MLP slot (empty: n_pos MLP blocks in every layer)

    def slot(self, layer: int) -> int:
        """n_pos MLP blocks, or a transcoder's active features and n_pos error nodes."""
        return self.slots[layer] if self.slots else self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.head_start(self.n_layers) + 1

    def head_start(self, layer: int) -> int:  # node (layer, head, q) = head_start + q * n_heads + head
        return self.n_pos + sum(self.n_heads * self.n_pos + self.slot(lower) for lower in range(layer))

    def mlp_start(self, layer: int) -> int:  # MLP block (layer, p) = mlp_start + p; else features, then errors
        return self.head_start(layer) + self.n_heads * self.n_pos

    @property
    def output(self) -> int:
        return self.n_nodes - 1

    def levels(self) -> tuple[int, ...]:
        """Boundaries of the groups with no edges inside them: tokens, heads_0, mlp_0, ..., output."""
        cuts = [0, self.n_pos]
        for layer in range(self.n_layers):
            cuts += [self.mlp_start(layer), self.mlp_start(layer) + self.slot(layer)]
        return tuple(cuts + [self.n_nodes])


def max_tokens(n_layers: int, n_heads: int) -> int:
    """The longest prompt whose dense adjacency fits MAX_ADJACENCY_BYTES (4 bytes an entry)."""
    max_nodes = int((MAX_ADJACENCY_BYTES / 4) ** 0.5)
    return (max_nodes - 1) // (n_layers * (n_heads + 1) + 1)


def check_size(handle: ModelHandle, n_pos: int, slots: tuple[int, ...] = ()) -> Layout:
    arch = handle.arch
    layout = Layout(arch.n_layers, arch.n_heads, n_pos, slots)
    limit = max_tokens(arch.n_layers, arch.n_heads)
    if slots and 4 * layout.n_nodes ** 2 > MAX_ADJACENCY_BYTES:
        n = layout.n_nodes
        raise BadInput(f"the graph of this prompt would have {n} nodes with its transcoders' active features, and "
                       f"the dense float32 adjacency {4 * n * n / 2 ** 30:.1f} GiB, over the "
                       f"{MAX_ADJACENCY_BYTES / 2 ** 30:.1f} GiB budget: use a shorter prompt or fewer transcoders")
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
    features: torch.Tensor  # (node,) int: transcoder feature index, -1 for others
    activations: torch.Tensor  # (node,) a feature's activation on the prompt, 0 for others

    def completeness_errors(self) -> torch.Tensor:
        """(node,) |incoming edges + constant - value|: 0 up to float rounding when the graph is exact."""
        rows = torch.cat([self.matrix[r:r + 1024].double().sum(1) for r in range(0, self.matrix.shape[0], 1024)])
        return (rows + self.constants.double() - self.values.double()).abs().float()

    def count_edges(self) -> int:
        return sum(int(torch.count_nonzero(self.matrix[r:r + 1024])) for r in range(0, self.matrix.shape[0], 1024))


def _index(layout: Layout, active: dict) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
    """kinds, layers, heads, positions, features of every node; active: layer -> (positions, features)."""
    n_pos, n_heads = layout.n_pos, layout.n_heads
    kinds, layers, heads, positions = ["token"] * n_pos, [-1] * n_pos, [-1] * n_pos, list(range(n_pos))
    features = [-1] * n_pos
    for layer in range(layout.n_layers):
        for q in range(n_pos):
            for h in range(n_heads):
                kinds.append("head"), layers.append(layer), heads.append(h), positions.append(q)
        features += [-1] * n_pos * n_heads
        if layer in active:
            pos, feat = active[layer]
            kinds += ["feature"] * len(pos) + ["error"] * n_pos
            positions += pos.tolist() + list(range(n_pos))
            features += feat.tolist() + [-1] * n_pos
        else:
            kinds += ["mlp"] * n_pos
            positions += list(range(n_pos))
            features += [-1] * n_pos
        layers += [layer] * layout.slot(layer)
        heads += [-1] * layout.slot(layer)
    kinds.append("logit"), layers.append(layout.n_layers), heads.append(-1), positions.append(n_pos - 1)
    features.append(-1)
    return (tuple(kinds), torch.tensor(layers), torch.tensor(heads), torch.tensor(positions),
            torch.tensor(features))


def build_adjacency(handle: ModelHandle, run: FrozenRun, transcoders: dict | None = None) -> Adjacency:
    """Every node's value, constant and incoming edges for one prompt's frozen model.

    transcoders: layer -> a transcoder (features.sae.TopKSAE) replacing that layer's MLP: its active
    features and one error node a position take the MLP blocks' place.
    """
    arch = handle.arch
    frozen = {layer: freeze_transcoder(handle, layer, tc, run) for layer, tc in (transcoders or {}).items()}
    active = {layer: torch.nonzero(tc.active, as_tuple=True) for layer, tc in frozen.items()}  # (positions, features)
    n_pos, d_model = run.n_pos, arch.d_model
    slots = tuple(len(active[layer][0]) + n_pos if layer in active else n_pos for layer in range(arch.n_layers))
    layout = check_size(handle, n_pos, slots if frozen else ())
    g_x, g_h = output_gradients(handle, run, frozen)
    keep = head_keep(handle, run)
    weights = [arch.head_weights(layer) for layer in range(arch.n_layers)]
    w_o = [w["W_O"].detach().float().cpu() for w in weights]  # (head, d_model, d_head)
    w_v = [w["W_V"].detach().float().cpu() for w in weights]  # (head, d_head, d_model)

    n = layout.n_nodes
    writes = torch.empty(n - 1, d_model)
    values = torch.empty(n)
    activations = torch.zeros(n)
    writes[:n_pos] = run.x[0]
    values[:n_pos] = (g_x[0] * run.x[0]).sum(-1)
    for layer in range(arch.n_layers):
        hw = torch.einsum("qhd,hmd->qhm", run.z[layer], w_o[layer])  # (pos, head, d_model)
        start, mlp, end = layout.head_start(layer), layout.mlp_start(layer), layout.head_start(layer + 1)
        writes[start:mlp] = hw.reshape(-1, d_model)
        values[start:mlp] = (hw * g_h[layer][:, None]).sum(-1).reshape(-1)
        if layer in frozen:
            pos, feat = active[layer]
            acts = frozen[layer].acts[pos, feat]
            writes[mlp:end - n_pos] = acts[:, None] * frozen[layer].w_dec[feat]
            writes[end - n_pos:end] = frozen[layer].error
            activations[mlp:end - n_pos] = acts
            values[mlp:end] = (g_x[layer + 1][torch.cat([pos, torch.arange(n_pos)])] * writes[mlp:end]).sum(-1)
        else:
            writes[mlp:end] = run.mlp_out[layer]
            values[mlp:end] = (g_x[layer + 1] * run.mlp_out[layer]).sum(-1)
    values[-1] = run.output
    kinds, layers, heads, positions, features = _index(layout, active)
    src_pos = positions[:-1]

    matrix = torch.zeros(n, n)
    constants = torch.zeros(n)
    constants[:n_pos] = values[:n_pos]  # a token's value has no incoming edge: all of it is its own
    zero = torch.zeros(n_pos, d_model)
    bias = torch.zeros(d_model)  # biases written so far outside any node (the same at every position)
    with torch.no_grad():
        for layer in range(arch.n_layers):
            start, mlp, end = layout.head_start(layer), layout.mlp_start(layer), layout.head_start(layer + 1)
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
                bias = bias + out_bias.detach().float().cpu()
            if layer in frozen:
                _transcoder_rows(layer, frozen[layer], active[layer], layout, run, g_x, writes, src_pos, bias, matrix,
                                 constants, values)
                bias = bias + frozen[layer].b_dec
                continue
            # MLP: one backward pass gives every position's read
            with torch.inference_mode(False), torch.enable_grad():
                h = (run.x[layer] + run.attn_out[layer]).clone().requires_grad_(True)
                (read,) = torch.autograd.grad(frozen_mlp(handle, layer, h, run), h, grad_outputs=g_x[layer + 1])
            same = src_pos[:mlp][None, :] == torch.arange(n_pos)[:, None]
            matrix[mlp:end, :mlp] = (read @ writes[:mlp].T) * same
            own = (frozen_mlp(handle, layer, zero, run) * g_x[layer + 1]).sum(-1)
            constants[mlp:end] = own + read @ bias
        read = run.s_final * run.readout
        last = src_pos == n_pos - 1
        matrix[-1, :-1] = (writes @ read) * last
        constants[-1] = read @ bias + run.readout_bias
    return Adjacency(layout=layout, matrix=matrix, values=values, constants=constants, writes=writes, kinds=kinds,
                     layers=layers, heads=heads, positions=positions, features=features, activations=activations)


def _transcoder_rows(layer, tc, active, layout, run, g_x, writes, src_pos, bias, matrix, constants, values) -> None:
    """Incoming edges and constants of a transcoder layer's features (error nodes have none: all constant).

    A feature f at p reads a_f = e_f . (s2[p] * h[p]) + b_f on its frozen active set, and its value is
    (g . d_f) a_f, so its read is (g . d_f) s2[p] * e_f and its own constant (g . d_f) b_f.
    """
    pos, feat = active
    mlp, end, n_pos = layout.mlp_start(layer), layout.head_start(layer + 1), layout.n_pos
    gain = (g_x[layer + 1][pos] * tc.w_dec[feat]).sum(-1)  # g . d_f, (feature,)
    read = gain[:, None] * run.s_mlp[layer][pos] * tc.w_enc[:, feat].T  # (feature, d_model)
    same = src_pos[:mlp][None, :] == pos[:, None]
    matrix[mlp:end - n_pos, :mlp] = (read @ writes[:mlp].T) * same
    constants[mlp:end - n_pos] = gain * tc.b_enc[feat] + read @ bias
    constants[end - n_pos:end] = values[end - n_pos:end]
