"""The local replacement model of one prompt: the real model with every attention pattern, every
norm denominator and every MLP gate frozen at its value on that prompt.

One forward pass of the real model (masks on) records, per layer, the residual stream, the head
outputs z, the attention probabilities and the attention and MLP outputs. From them come the frozen
norm scales (an RMSNorm's 1 / rms(x) folded with its weight into one vector per position) and the
frozen MLP gates act(gate(x)). What is left is linear in the residual stream:

    x_0     = the token embeddings
    h_l     = x_l + o_proj(P_l @ v_proj(s1_l * x_l))         # P_l frozen pattern, s1_l frozen scale
    x_{l+1} = h_l + down(a_l * up(s2_l * h_l))                # a_l frozen gate, s2_l frozen scale
    output  = u . (s_f * x_L[last]) + b                       # u = W_U[target] (- W_U[contrast])

and equals the real model on the prompt. Its gradient is therefore the same at every input, which is
what makes each node's value the exact sum of its incoming edges (adjacency.py).

Where a transcoder replaces a layer's MLP (circuit-tracer's replacement model), that layer computes
instead its features, the set active on the prompt frozen (a Top-K ReLU is linear on it), plus a
constant error term, the real MLP output minus the transcoder's reconstruction:

    x_{l+1} = h_l + ((s2_l * h_l - b_dec') @ W_enc + b_enc) * active_l @ W_dec + b_dec + error_l

A transcoder must read the MLP's normalised input (blocks.L.ln2.hook_normalized, harvest site mlp.in)
and write its output (blocks.L.hook_mlp_out): `check_transcoder` refuses any other.

The families whose blocks have this shape (pre-norm RMSNorm, gated MLP) are listed in
GRAPH_FAMILIES with where their parts live; others are refused with UnsupportedModel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..arch.spec import HeadMask
from ..common.errors import BadInput, UnsupportedModel
from ..hooks.dispatch import hooks
from ..hooks.masking import mask_fns, merge_fns
from ..interventions.metrics import Target
from ..model.loading import ModelHandle


@dataclass(frozen=True)
class Parts:
    """Where a family keeps what the frozen model needs beyond the adapter table."""

    norm_attn: str = "input_layernorm"  # block attribute: the norm before attention
    norm_mlp: str = "post_attention_layernorm"  # block attribute: the norm before the MLP
    norm_final: str = "model.norm"  # path from the causal LM: the final norm
    v_proj: str = "v_proj"  # attention attribute: the value projection
    gate: str = "gate_proj"  # MLP attributes: gate, up and down projections and the activation
    up: str = "up_proj"
    down: str = "down_proj"
    act: str = "act_fn"


_PRE_NORM_GATED = Parts()
GRAPH_FAMILIES: dict[str, Parts] = {"llama": _PRE_NORM_GATED, "qwen2": _PRE_NORM_GATED,
                                    "mistral": _PRE_NORM_GATED, "gemma": _PRE_NORM_GATED}


def parts_of(handle: ModelHandle) -> Parts:
    parts = GRAPH_FAMILIES.get(handle.arch.family)
    if parts is None:
        raise UnsupportedModel(
            f"attribution graphs need pre-norm RMSNorm blocks with a gated MLP; the {handle.arch.family} family "
            f"is not one of them (supported: {', '.join(GRAPH_FAMILIES)})")
    return parts


def _path(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _linear(module, x: torch.Tensor) -> torch.Tensor:
    """An nn.Linear applied in float32 on x's device (the CPU), whatever the model's dtype and device."""
    bias = None if module.bias is None else module.bias.float().to(x.device)
    return F.linear(x, module.weight.float().to(x.device), bias)


def norm_scale(norm, x: torch.Tensor) -> torch.Tensor:
    """The frozen scale s of an RMSNorm at x (pos, d_model): norm(x) = s * x, s (pos, d_model).

    Read off the module itself: a constant vector c * 1 with c = rms(x) has the same denominator as x,
    so norm(c * 1) / c is the weight over that denominator, whatever form the weight takes (w, 1 + w).
    """
    c = x.float().pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-30)
    device = next(norm.parameters()).device
    return norm(c.expand_as(x).contiguous().to(device)).float().to(x.device) / c


@dataclass(frozen=True, eq=False)
class FrozenRun:
    """Everything the frozen model of one prompt holds fixed, and the real run's activations. float32."""

    ids: torch.Tensor  # (pos,) token ids
    x: torch.Tensor  # (layer + 1, pos, d_model) residual stream before each layer; x[n_layers] after the last
    z: torch.Tensor  # (layer, pos, head, d_head) head outputs (masked heads 0)
    probs: torch.Tensor  # (layer, head, pos, pos) attention probabilities (query, key)
    attn_out: torch.Tensor  # (layer, pos, d_model) attention block outputs
    mlp_out: torch.Tensor  # (layer, pos, d_model) MLP block outputs
    s_attn: torch.Tensor  # (layer, pos, d_model) frozen scale of the norm before attention
    s_mlp: torch.Tensor  # (layer, pos, d_model) frozen scale of the norm before the MLP
    s_final: torch.Tensor  # (d_model,) frozen scale of the final norm at the last position
    gates: torch.Tensor  # (layer, pos, d_mlp) frozen MLP gates act(gate(s_mlp * h))
    readout: torch.Tensor  # (d_model,) u: the unembedding row of the target (minus the contrast's)
    readout_bias: float  # the output head's bias on the same tokens (0 without one)
    output: float  # the real model's logit(target) (- logit(contrast)) at the last position
    masked: tuple[tuple[int, int], ...]  # (layer, head) switched off at the projection: z = 0 always

    @property
    def n_pos(self) -> int:
        return int(self.ids.shape[0])


def capture_run(handle: ModelHandle, ids: torch.Tensor, target: Target, masks: tuple[HeadMask, ...] = ()) -> FrozenRun:
    """Run the real model once on ids (1, pos) with the masks on and record what the frozen model needs."""
    arch, parts = handle.arch, parts_of(handle)
    found: dict[tuple[int, str], torch.Tensor] = {}

    def reader(key):
        def fn(t):
            found[key] = t[0].detach().float().cpu().clone()  # the frozen model lives on the CPU, in float32

        return fn

    sites = ("attn.z", "attn.pattern", "attn.out", "mlp.out", "resid.post")
    table = merge_fns(mask_fns(masks), {(layer, site): [reader((layer, site))]
                                        for layer in range(arch.n_layers) for site in sites})
    with torch.inference_mode(), hooks(handle.model, arch, table):
        logits = handle.model(input_ids=ids, use_cache=False).logits[0, -1].float()
    # clones made outside inference mode: the frozen model's backward pass saves them
    found = {key: value.clone() for key, value in found.items()}
    logits = logits.cpu().clone()
    n = arch.n_layers
    attn_out = torch.stack([found[(layer, "attn.out")] for layer in range(n)])
    mlp_out = torch.stack([found[(layer, "mlp.out")] for layer in range(n)])
    post = torch.stack([found[(layer, "resid.post")] for layer in range(n)])
    x = torch.cat([(post[0] - attn_out[0] - mlp_out[0])[None], post])  # embeddings, then after each layer
    s_attn, s_mlp, gates = [], [], []
    with torch.no_grad():
        for layer in range(n):
            block, mlp = arch.layers[layer], arch.mlp[layer]
            s_attn.append(norm_scale(getattr(block, parts.norm_attn), x[layer]))
            h = x[layer] + attn_out[layer]
            s = norm_scale(getattr(block, parts.norm_mlp), h)
            s_mlp.append(s)
            gates.append(getattr(mlp, parts.act)(_linear(getattr(mlp, parts.gate), s * h)).float())
        s_final = norm_scale(_path(handle.model, parts.norm_final), x[n][-1:])[0]
        head = handle.model.get_output_embeddings()
        readout = head.weight[target.id].float().cpu()
        bias = 0.0 if getattr(head, "bias", None) is None else float(head.bias[target.id])
        output = float(logits[target.id])
        if target.has_contrast:
            readout = readout - head.weight[target.contrast_id].float().cpu()
            bias -= 0.0 if getattr(head, "bias", None) is None else float(head.bias[target.contrast_id])
            output -= float(logits[target.contrast_id])
    masked = tuple(sorted({(m.layer, m.head) for m in masks if m.level in ("projection", "both")}))
    return FrozenRun(ids=ids[0].detach().cpu(), x=x, z=torch.stack([found[(layer, "attn.z")] for layer in range(n)]),
                     probs=torch.stack([found[(layer, "attn.pattern")] for layer in range(n)]), attn_out=attn_out,
                     mlp_out=mlp_out, s_attn=torch.stack(s_attn), s_mlp=torch.stack(s_mlp), s_final=s_final,
                     gates=torch.stack(gates), readout=readout, readout_bias=bias, output=output, masked=masked)


TRANSCODER_SITES = ("blocks.{}.ln2.hook_normalized", "blocks.{}.hook_mlp_out")  # read, written


def check_transcoder(handle: ModelHandle, layer: int, tc) -> None:
    """BadInput unless `tc` is a transcoder of this layer's MLP (right sites, layer and widths)."""
    arch = handle.arch
    if not 0 <= layer < arch.n_layers:
        raise BadInput(f"a transcoder for layer {layer}: the model has layers 0-{arch.n_layers - 1}")
    want = tuple(s.format(layer) for s in TRANSCODER_SITES)
    cfg = tc.cfg
    if (cfg.hook_name, cfg.hook_name_out) != want:
        raise BadInput(f"the transcoder given for layer {layer} reads {cfg.hook_name} and writes "
                       f"{cfg.hook_name_out}; a graph replaces layer {layer}'s MLP only with one reading {want[0]} "
                       f"and writing {want[1]}")
    if cfg.d_in != arch.d_model or cfg.out_dim != arch.d_model:
        raise BadInput(f"the transcoder for layer {layer} maps width {cfg.d_in} to {cfg.out_dim}; the model's "
                       f"d_model is {arch.d_model}")


@dataclass(frozen=True, eq=False)
class FrozenTranscoder:
    """A transcoder standing in for one layer's MLP on one prompt: weights float32, active set frozen."""

    w_enc: torch.Tensor  # (d_model, d_sae)
    b_enc: torch.Tensor  # (d_sae,) with b_dec's share folded in when the transcoder subtracts it from its input
    w_dec: torch.Tensor  # (d_sae, d_model)
    b_dec: torch.Tensor  # (d_model,)
    active: torch.Tensor  # (pos, d_sae) float: 1 where the feature is among the top k and positive
    acts: torch.Tensor  # (pos, d_sae) the activations on the prompt (0 where inactive)
    error: torch.Tensor  # (pos, d_model) the real MLP output minus the reconstruction


def freeze_transcoder(handle: ModelHandle, layer: int, tc, run: FrozenRun) -> FrozenTranscoder:
    check_transcoder(handle, layer, tc)
    w_enc, w_dec = tc.W_enc.detach().float().cpu(), tc.W_dec.detach().float().cpu()
    b_dec = tc.b_dec.detach().float().cpu()
    b_enc = tc.b_enc.detach().float().cpu()
    if tc.cfg.apply_b_dec_to_input:
        b_enc = b_enc - b_dec @ w_enc
    with torch.no_grad():
        n2 = run.s_mlp[layer] * (run.x[layer] + run.attn_out[layer])
        vals, idx = torch.relu(n2 @ w_enc + b_enc).topk(tc.cfg.k, dim=-1)
        active = torch.zeros(n2.shape[0], w_enc.shape[1]).scatter_(-1, idx, (vals > 0).float())
        acts = (n2 @ w_enc + b_enc) * active
        error = run.mlp_out[layer] - (acts @ w_dec + b_dec)
    return FrozenTranscoder(w_enc, b_enc, w_dec, b_dec, active, acts, error)


def head_keep(handle: ModelHandle, run: FrozenRun) -> torch.Tensor:
    """(layer, head) 1.0 for a live head, 0.0 for one masked at the projection."""
    keep = torch.ones(handle.arch.n_layers, handle.arch.n_heads)
    for layer, head in run.masked:
        keep[layer, head] = 0.0
    return keep


def head_values(handle: ModelHandle, layer: int, x: torch.Tensor, run: FrozenRun) -> torch.Tensor:
    """The frozen attention layer's value vectors per query head: v_proj(s1 * x) -> (pos, head, d_head)."""
    arch, parts = handle.arch, parts_of(handle)
    v = _linear(getattr(arch.attn[layer], parts.v_proj), run.s_attn[layer] * x)
    v = v.view(x.shape[0], arch.n_kv_heads, arch.d_head)
    return v.repeat_interleave(arch.n_heads // arch.n_kv_heads, dim=1)


def frozen_mlp(handle: ModelHandle, layer: int, h: torch.Tensor, run: FrozenRun) -> torch.Tensor:
    """The frozen MLP of a layer on h (pos, d_model): down(a * up(s2 * h)), linear in h up to its biases."""
    mlp, parts = handle.arch.mlp[layer], parts_of(handle)
    return _linear(getattr(mlp, parts.down), run.gates[layer] * _linear(getattr(mlp, parts.up), run.s_mlp[layer] * h))


def frozen_forward(handle: ModelHandle, run: FrozenRun, deltas: dict | None = None, grad: bool = False,
                   transcoders: dict[int, FrozenTranscoder] | None = None):
    """The frozen model's output from the embeddings, and the residual streams it went through.

    deltas: {("x", l): (pos, d_model)} added to the residual stream before layer l (l = n_layers: after
    the last), {("h", l): ...} added after layer l's attention. Returns (output (), xs, hs): xs the
    n_layers + 1 streams x_l, hs the n_layers streams h_l; with grad=True they are in autograd's graph.
    transcoders: layer -> the frozen transcoder computing that layer's MLP output.
    """
    arch, deltas, transcoders = handle.arch, deltas or {}, transcoders or {}
    keep = head_keep(handle, run)
    with torch.inference_mode(False), torch.set_grad_enabled(grad):
        x = run.x[0].clone().requires_grad_(grad)
        xs, hs = [], []
        for layer in range(arch.n_layers):
            if ("x", layer) in deltas:
                x = x + deltas[("x", layer)]
            xs.append(x)
            z = torch.einsum("hqk,khd->qhd", run.probs[layer], head_values(handle, layer, x, run))
            z = z * keep[layer][None, :, None]
            h = x + _linear(arch.out_proj[layer], z.reshape(x.shape[0], -1))
            if ("h", layer) in deltas:
                h = h + deltas[("h", layer)]
            hs.append(h)
            tc = transcoders.get(layer)
            if tc is None:
                x = h + frozen_mlp(handle, layer, h, run)
            else:
                acts = ((run.s_mlp[layer] * h) @ tc.w_enc + tc.b_enc) * tc.active
                x = h + acts @ tc.w_dec + tc.b_dec + tc.error
        if ("x", arch.n_layers) in deltas:
            x = x + deltas[("x", arch.n_layers)]
        xs.append(x)
        output = (run.s_final * x[-1]) @ run.readout + run.readout_bias
    return output, xs, hs


def output_gradients(handle: ModelHandle, run: FrozenRun,
                     transcoders: dict[int, FrozenTranscoder] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """d output / d residual stream in the frozen model, from one backward pass.

    Returns g_x (layer + 1, pos, d_model), the gradient at x_l (where tokens and layer l - 1's MLP
    write), and g_h (layer, pos, d_model), at h_l (where layer l's heads write).
    """
    output, xs, hs = frozen_forward(handle, run, grad=True, transcoders=transcoders)
    with torch.inference_mode(False):
        grads = torch.autograd.grad(output, xs + hs)
    n = handle.arch.n_layers + 1
    return torch.stack([g.detach() for g in grads[:n]]), torch.stack([g.detach() for g in grads[n:]])
