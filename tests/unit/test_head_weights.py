"""head_weights() against the forward pass itself: a layer's captured attention pattern, head outputs
and attention output are rebuilt from W_Q, W_K, W_V, W_O (plus the biases, which head_weights
leaves out) for every family.

Position ids are all zero so rotary embeddings are the identity and W_Q, W_K can be checked on
rotary families too.
"""
import pytest
import torch

from synapse_core.hooks.dispatch import hooks

INPUT_NORM = {"gpt2": "ln_1", "opt": "self_attn_layer_norm"}  # default: input_layernorm


def _qkv_biases(arch, layer):
    """Q, K, V biases as (head, d_head) each, key/value heads repeated; zeros where there is none."""
    attn, row = arch.attn[layer], arch.row
    h, kv, d = arch.n_heads, arch.n_kv_heads, arch.d_head
    if row.qkv_layout == "separate":
        mods = [getattr(attn, name) for name in row.qkv]
        q, k, v = (m.bias if m.bias is not None else torch.zeros(m.weight.shape[0]) for m in mods)
    else:
        bias = getattr(attn, row.qkv[0]).bias
        if bias is None:
            bias = torch.zeros((h + 2 * kv) * d)
        if row.qkv_layout == "fused_concat":
            q, k, v = bias.split([h * d, kv * d, kv * d])
        elif row.qkv_layout == "fused_conv1d":
            q, k, v = bias.split(h * d)
        else:  # fused_per_head
            q, k, v = (part.reshape(-1) for part in bias.view(h, 3, d).unbind(1))
    k = k.view(kv, d).repeat_interleave(h // kv, dim=0)
    v = v.view(kv, d).repeat_interleave(h // kv, dim=0)
    return q.view(h, d), k, v


def _run(handle, ids, layer):
    arch, model = handle.arch, handle.model
    seen = {}

    def keep(name):
        return lambda t: seen.__setitem__(name, t.detach().clone())

    fns = {(layer, "attn.pattern"): [keep("pattern")], (layer, "attn.z"): [keep("z")],
           (layer, "attn.out"): [keep("out")]}
    if layer > 0:
        fns[(layer - 1, "resid.post")] = [keep("resid")]
    positions = torch.zeros_like(ids)
    with torch.no_grad(), hooks(model, arch, fns):
        model(ids, position_ids=positions)
    return seen


def _attn_input(handle, resid, layer):
    block = handle.arch.layers[layer]
    norm = getattr(block, INPUT_NORM.get(handle.family, "input_layernorm"))
    with torch.no_grad():
        return norm(resid)  # (batch, pos, d_model)


def test_w_v_and_w_o_rebuild_head_outputs(handle, tiny):
    arch, layer = handle.arch, 1
    seen = _run(handle, tiny.sample_ids(), layer)
    x = _attn_input(handle, seen["resid"], layer)
    w = arch.head_weights(layer)
    _, _, b_v = _qkv_biases(arch, layer)
    v = torch.einsum("bpm,hdm->bhpd", x, w["W_V"]) + b_v[None, :, None, :]  # (batch, head, pos, d_head)
    z = torch.einsum("bhqk,bhkd->bqhd", seen["pattern"], v)  # (batch, pos, head, d_head)
    torch.testing.assert_close(z, seen["z"], atol=1e-5, rtol=1e-4)

    bias = arch.out_proj[layer].bias
    out = torch.einsum("bphd,hmd->bpm", seen["z"], w["W_O"]) + (bias if bias is not None else 0)
    write = arch.attn_write[layer]
    if write is not arch.out_proj[layer]:  # Gemma 2/3: the block writes the post-norm of the projection
        with torch.no_grad():
            out = write(out)
    torch.testing.assert_close(out, seen["out"], atol=1e-5, rtol=1e-4)


def test_w_q_and_w_k_rebuild_the_pattern(handle, tiny):
    if handle.family == "gemma3_text":
        pytest.skip("gemma3 normalizes q and k per head (q_norm, k_norm) between W_Q/W_K and the scores")
    arch, layer, cfg = handle.arch, 1, handle.model.config
    ids = tiny.sample_ids()
    seen = _run(handle, ids, layer)
    x = _attn_input(handle, seen["resid"], layer)
    w = arch.head_weights(layer)
    b_q, b_k, _ = _qkv_biases(arch, layer)
    q = torch.einsum("bpm,hdm->bhpd", x, w["W_Q"]) + b_q[None, :, None, :]
    k = torch.einsum("bpm,hdm->bhpd", x, w["W_K"]) + b_k[None, :, None, :]
    scale = getattr(cfg, "query_pre_attn_scalar", None) or arch.d_head
    scores = q @ k.transpose(-1, -2) * scale ** -0.5
    if getattr(cfg, "attn_logit_softcapping", None):
        cap = cfg.attn_logit_softcapping
        scores = torch.tanh(scores / cap) * cap
    n = ids.shape[1]
    q_pos, k_pos = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = k_pos <= q_pos
    layer_types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if window and (layer_types is None or layer_types[layer] == "sliding_attention"):
        allowed &= k_pos > q_pos - window
    pattern = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    torch.testing.assert_close(pattern, seen["pattern"], atol=1e-5, rtol=1e-4)
    # and the pattern is far from uniform, so a wrong W_Q or W_K could not pass by luck
    assert seen["pattern"][..., -1, :].max() > 0.3
