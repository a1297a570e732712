"""AtP*: attribution patching with its two fixes (Kramár et al., 2024, "AtP*: An efficient and
scalable method for localizing LLM behaviour to components"), for zero-ablating head outputs.

Plain attribution patching (attribution.py) multiplies dm/dz by (0 - z). It misses heads whose
effect runs through later heads' attention patterns: the softmax is saturated, its gradient near 0,
so the linear estimate of how the pattern moves is far too small. AtP* splits the estimate:

    value path  dm/dz x (0 - z) with every attention pattern held fixed (no gradient through
                queries and keys): one backward pass;
    QK path     for each later layer L', the head's contribution to the residual stream is
                removed from L''s input and L''s attention probabilities are recomputed exactly
                (the block run again on the edited stream, up to its softmax), and the change is
                multiplied by dm/dA of that layer:  sum over head, query, key of dm/dA x (A' - A).

The recomputation takes the softmax over every key at once, each key's logit moved by the head's
own contribution to it, instead of the first-order estimate. It keeps the direct path from the head
to L' (what intermediate layers do with that change is in the value path, linearly).

GradDrop fights cancellation across layers: for each layer l the estimate is taken again with the
gradient through l's residual contribution set to zero (one backward pass per layer, the forward
pass shared), and a head is ranked by mean over l of |estimate|, over L - 1 layers. A head whose
direct and indirect effects cancel in the full gradient keeps a large score when one of them is
dropped. The signed estimate reported is the QK-fixed one, with nothing dropped.
"""
from __future__ import annotations

import contextlib

import torch
import torch.autograd.forward_ad as fwad

from ..hooks.dispatch import block_calls, hooks
from ..hooks.masking import mask_fns, merge_fns
from ..interventions.metrics import Target
from ..model.loading import ModelHandle
from .attribution import Attribution, metric_values

METHOD_STAR = ("AtP*: value path d metric / d z x (0 - z) with attention patterns held fixed, plus each later "
               "layer's attention softmax recomputed without the head's contribution (QK fix); ranked by GradDrop, "
               "the mean over layers of |estimate| with that layer's gradient dropped")
TOKEN_BUDGET = 8192  # rows x tokens of one recomputation (rows: source heads whose contribution is removed)


class _Stop(Exception):
    """Raised from a pattern function once the recomputed probabilities are read: skip the rest of the block."""


def _contributions(handle: ModelHandle, layer: int, z: torch.Tensor) -> torch.Tensor:
    """What each head of `layer` adds to the residual stream: written(z) - written(z without the head).

    z (1, pos, head, d_head) -> (head, pos, d_model); exact also where a post-norm follows the projection.
    """
    arch = handle.arch
    n_heads = arch.n_heads
    without = z.expand(n_heads, *z.shape[1:]).clone()
    without[torch.arange(n_heads), :, torch.arange(n_heads)] = 0
    both = torch.cat([z, without]).flatten(2)  # (1 + head, pos, head * d_head)

    def write(x):
        out = arch.out_proj[layer](x)
        out = out[0] if isinstance(out, tuple) else out
        return arch.attn_write[layer](out) if arch.attn_write[layer] is not arch.out_proj[layer] else out

    written = write(both.to(handle.dtype)).float()
    return written[:1] - written[1:]


def _patterns(handle: ModelHandle, layer: int, call, x: torch.Tensor, masks,
              tangent: torch.Tensor | None = None) -> torch.Tensor:
    """Attention probabilities of `layer` with each row of x (rows, pos, d_model) as its input stream;
    with a tangent (rows, pos, d_model), their first-order change along it instead (forward-mode AD)."""
    args, kwargs = call
    kwargs = dict(kwargs)
    seen = []

    def read(probs):  # (rows, head, q_pos, k_pos)
        seen.append((fwad.unpack_dual(probs).tangent if tangent is not None else probs).float())
        raise _Stop

    fns = merge_fns(mask_fns(tuple(masks)), {(layer, "attn.pattern"): [read]})
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if tangent is not None:
            stack.enter_context(fwad.dual_level())
            x = fwad.make_dual(x, tangent.to(x.dtype))
        if args:
            args = (x, *args[1:])
        else:
            kwargs["hidden_states"] = x
        try:
            with hooks(handle.model, handle.arch, fns):
                handle.arch.layers[layer](*args, **kwargs)
        except _Stop:
            pass
    assert len(seen) == 1, f"layer {layer}'s attention did not run"
    return seen[0]


def attribute_heads_star(handle: ModelHandle, ids: torch.Tensor, target: Target, metric: str,
                         masks=()) -> Attribution:
    """AtP* estimates (layer, head) of zero-ablating each head, and GradDrop ranking scores.

    ids (1, pos). One forward pass, 1 + (n_layers - 1) backward passes through it, and one partial
    recomputation of each layer's attention for the heads below it. Masked heads estimate 0.
    """
    arch = handle.arch
    n_layers, n_heads = arch.n_layers, arch.n_heads
    z_seen, z_leaf, a_seen, a_leaf, stream = {}, {}, {}, {}, {}

    def z_fn(layer):
        def fn(z):  # (batch, pos, head, d_head)
            delta = torch.zeros_like(z, requires_grad=True)
            z_seen[layer], z_leaf[layer] = z.detach(), delta
            return z + delta
        return fn

    def a_fn(layer):
        def fn(probs):  # (batch, head, q_pos, k_pos): a zero leaf added, whose gradient is dm/dA
            delta = torch.zeros_like(probs, requires_grad=True)
            a_seen[layer], a_leaf[layer] = probs.detach().float(), delta
            return probs + delta
        return fn

    def resid_fn(layer):
        def fn(out):  # (batch, pos, d_model): the input of layer + 1
            stream[layer] = out
        return fn

    table = merge_fns(mask_fns(tuple(masks)), {
        **{(layer, "attn.z"): [z_fn(layer)] for layer in range(n_layers)},
        **{(layer, "attn.pattern"): [a_fn(layer)] for layer in range(n_layers)},
        **{(layer, "resid.post"): [resid_fn(layer)] for layer in range(n_layers)}})
    with torch.inference_mode(False), torch.enable_grad():
        with block_calls(arch) as calls, hooks(handle.model, arch, table):
            logits = handle.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]
        value = metric_values(logits, target, metric)[0]
        layers = list(range(n_layers))
        grads = torch.autograd.grad(value, [z_leaf[l] for l in layers] + [a_leaf[l] for l in layers]
                                    + [stream[l] for l in layers], retain_graph=n_layers > 1)
        val = torch.stack([-(g * z_seen[l]).sum(dim=(0, 1, 3)) for l, g in zip(layers, grads)]).float()  # (layer, head)
        g_base = [g[0].float() for g in grads[n_layers:2 * n_layers]]  # per layer: (head, q_pos, k_pos)
        g_stream = grads[2 * n_layers:]  # per layer: dm/d(its output)
        # GradDrop: with layer d's contribution dropped from the backward pass, the gradient at d's input is
        # the gradient at its output (the skip connection alone), so the pass starts there and only runs
        # through the layers below d. val_drop[d]: the value path of the heads below d; g_drop[d]: dm/dA there
        val_drop = torch.zeros(n_layers, n_layers, n_heads)  # (dropped layer, layer, head)
        g_drop: dict[int, list[torch.Tensor]] = {}
        for d in range(1, n_layers):
            part = torch.autograd.grad(stream[d - 1], [z_leaf[l] for l in range(d)] + [a_leaf[l] for l in range(1, d)],
                                       grad_outputs=g_stream[d], retain_graph=True, allow_unused=True)
            for l in range(d):
                g = part[l]
                val_drop[d, l] = 0.0 if g is None else -(g * z_seen[l]).sum(dim=(0, 1, 3)).float()
            g_drop[d] = [torch.zeros_like(g_base[l]) if g is None else g[0].float()
                         for l, g in zip(range(1, d), part[d:])]
        clean_logits, clean = logits[0].detach().float(), float(value.detach())
    del logits, value, grads

    # the QK path: for each later layer, its softmax recomputed without each lower head's contribution
    contributions = {l: _contributions(handle, l, z_seen[l]) for l in range(n_layers - 1)}  # (head, pos, d_model)
    qk = torch.zeros(n_layers + 1, n_layers, n_heads)  # row d < n_layers: layer d dropped; last row: nothing dropped
    for later in range(1, n_layers):
        # dm/dA at `later` with each layer dropped in turn, nothing dropped last: (n_layers + 1, head, q, k)
        rows = [g_base[later] if d < later else torch.zeros_like(g_base[later]) if d == later
                else g_drop[d][later - 1] for d in range(n_layers)]
        g_all = torch.stack(rows + [g_base[later]])
        sources = torch.cat([contributions[l] for l in range(later)])  # (later * head, pos, d_model)
        x = stream[later - 1].detach()
        change = []  # exact softmax change minus its first-order estimate, which plain AtP already counts
        rows = max(1, TOKEN_BUDGET // x.shape[1])
        for start in range(0, sources.shape[0], rows):
            chunk = sources[start:start + rows]
            exact = _patterns(handle, later, calls[later], (x.float() - chunk).to(x.dtype), masks) - a_seen[later]
            linear = _patterns(handle, later, calls[later], x.expand(len(chunk), -1, -1).contiguous(), masks,
                               tangent=-chunk)
            change.append(exact - linear)
        terms = torch.einsum("dhqk,shqk->ds", g_all, torch.cat(change))  # (n_layers + 1, later * head)
        qk[:, :later] += terms.view(n_layers + 1, later, n_heads)

    estimates = val + qk[n_layers]  # nothing dropped
    dropped = torch.empty(n_layers, n_layers, n_heads)  # (dropped layer d, layer, head)
    for d in range(n_layers):
        for l in range(n_layers):
            if l < d:
                dropped[d, l] = val_drop[d, l] + qk[d, l]
            elif l == d:
                dropped[d, l] = 0.0  # the head's own layer dropped: no path left
            else:
                dropped[d, l] = estimates[l]  # a lower layer dropped: the gradient above it is untouched
    scores = dropped.abs().sum(0) / max(n_layers - 1, 1)
    return Attribution(estimates=estimates.float().cpu(), clean_logits=clean_logits, clean=clean,
                       scores=scores.float().cpu())
