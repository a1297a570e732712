"""Architecture adapters: where each model family keeps its layers, attention, output projection
and MLP. A family is a row in FAMILIES, not a branch in every function.

The head's output ("z") is always read as the input of the attention output projection, laid out
(batch, pos, head * d_head) with head-major order, which holds for every family listed here.

What a block writes into the residual stream is the output projection's (the MLP's) output in most
families; Gemma 2 and 3 normalise it again first (post_attention_layernorm,
post_feedforward_layernorm). `attn_write` and `mlp_write` name the module whose output is added to
the stream, so the attn.out and mlp.out sites are the written values in every family.

What the MLP reads (the normalised residual stream, site mlp.in) is the input of the `mlp` module
in most families; OPT runs its MLP inline in the block (fc1, activation, fc2), so `mlp_in` names
fc1 there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..common.errors import UnsupportedModel


@dataclass(frozen=True)
class Family:
    """One row of the adapter table."""

    layers: str  # dotted path from the causal-LM module to the list of decoder blocks
    attn: str  # attribute of a block holding the attention module
    out_proj: str  # attribute of the attention module: the output projection (input = concatenated heads)
    mlp: str  # attribute of a block: the module whose output is the MLP's contribution
    qkv: tuple[str, ...]  # names of q/k/v projections in the attention module, or one fused name
    qkv_layout: str = "separate"  # separate | fused_concat | fused_conv1d | fused_per_head
    out_layout: str = "linear"  # linear (weight: d_model x heads*d_head) | conv1d (transposed)
    attn_post_norm: str | None = None  # attribute of a block normalising the attention output before the add
    mlp_post_norm: str | None = None  # ... and the MLP output
    mlp_in: str | None = None  # attribute of a block whose input is the MLP's (normalised) input; None: `mlp`


_LLAMA_LIKE = Family("model.layers", "self_attn", "o_proj", "mlp", ("q_proj", "k_proj", "v_proj"))
_GEMMA_POST_NORMED = Family("model.layers", "self_attn", "o_proj", "mlp", ("q_proj", "k_proj", "v_proj"),
                            attn_post_norm="post_attention_layernorm", mlp_post_norm="post_feedforward_layernorm")

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA_POST_NORMED,
    "gemma3_text": _GEMMA_POST_NORMED,
    "phi3": Family("model.layers", "self_attn", "o_proj", "mlp", ("qkv_proj",), "fused_concat"),
    "gpt2": Family("transformer.h", "attn", "c_proj", "mlp", ("c_attn",), "fused_conv1d", "conv1d"),
    "gpt_neox": Family("gpt_neox.layers", "attention", "dense", "mlp", ("query_key_value",), "fused_per_head"),
    "opt": Family("model.decoder.layers", "self_attn", "out_proj", "fc2", ("q_proj", "k_proj", "v_proj"),
                  mlp_in="fc1"),
}


@dataclass(frozen=True)
class Architecture:
    """What the engine needs to know about one loaded model, discovered from its modules."""

    family: str
    n_layers: int
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads per layer (fewer than n_heads under grouped-query attention)
    d_head: int
    d_model: int
    d_vocab: int
    layers: tuple[nn.Module, ...]
    attn: tuple[nn.Module, ...]
    out_proj: tuple[nn.Module, ...]
    mlp: tuple[nn.Module, ...]
    row: Family
    attn_write: tuple[nn.Module, ...] = ()  # per layer: the module whose output the attention adds to the stream
    mlp_write: tuple[nn.Module, ...] = ()  # ... and the MLP (the post-norm where the family has one)
    mlp_read: tuple[nn.Module, ...] = ()  # per layer: the module whose input is the MLP's normalised input

    def check_head(self, layer: int, head: int) -> None:
        from ..common.errors import BadInput

        if not 0 <= layer < self.n_layers:
            raise BadInput(f"layer {layer} does not exist: the model has layers 0-{self.n_layers - 1}")
        if not 0 <= head < self.n_heads:
            raise BadInput(f"head {head} does not exist: layer {layer} has heads 0-{self.n_heads - 1}")

    def head_weights(self, layer: int) -> dict[str, torch.Tensor]:
        """Per-head weights of one layer, biases and norms left out.

        Returns W_Q (head, d_head, d_model), W_K and W_V (head, d_head, d_model) with key/value
        heads repeated to match query heads, and W_O (head, d_model, d_head).
        """
        attn, row = self.attn[layer], self.row
        h, kv, d = self.n_heads, self.n_kv_heads, self.d_head
        if row.qkv_layout == "separate":
            q, k, v = (getattr(attn, name).weight for name in row.qkv)
        elif row.qkv_layout == "fused_concat":
            w = getattr(attn, row.qkv[0]).weight
            q, k, v = torch.split(w, [h * d, kv * d, kv * d], dim=0)
        elif row.qkv_layout == "fused_conv1d":
            q, k, v = getattr(attn, row.qkv[0]).weight.t().split(h * d, dim=0)
        else:  # fused_per_head: rows grouped per head as [q | k | v]
            w = getattr(attn, row.qkv[0]).weight.view(h, 3 * d, -1)
            q, k, v = (part.reshape(h * d, -1) for part in w.split(d, dim=1))
        o = self.out_proj[layer].weight
        if row.out_layout == "conv1d":
            o = o.t()
        groups = h // kv
        w_k = k.view(kv, d, -1).repeat_interleave(groups, dim=0)
        w_v = v.view(kv, d, -1).repeat_interleave(groups, dim=0)
        w_o = o.view(o.shape[0], h, d).permute(1, 0, 2)
        return {"W_Q": q.view(h, d, -1), "W_K": w_k, "W_V": w_v, "W_O": w_o}


def _get_path(root: nn.Module, path: str) -> nn.Module:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def discover(model: nn.Module) -> Architecture:
    """Build the Architecture of a Hugging Face causal LM, or raise UnsupportedModel."""
    config = model.config
    family = getattr(config, "model_type", None)
    row = FAMILIES.get(family)
    if row is None:
        known = ", ".join(sorted(FAMILIES))
        raise UnsupportedModel(f"model family {family!r} is not supported; supported families: {known}")
    try:
        layers = tuple(_get_path(model, row.layers))
        attn = tuple(getattr(block, row.attn) for block in layers)
        out_proj = tuple(getattr(a, row.out_proj) for a in attn)
        mlp = tuple(getattr(block, row.mlp) for block in layers)
        attn_write = tuple(getattr(block, row.attn_post_norm) for block in layers) if row.attn_post_norm else out_proj
        mlp_write = tuple(getattr(block, row.mlp_post_norm) for block in layers) if row.mlp_post_norm else mlp
        mlp_read = tuple(getattr(block, row.mlp_in) for block in layers) if row.mlp_in else mlp
    except AttributeError as exc:
        raise UnsupportedModel(f"{family} model does not have the expected module layout ({exc})") from exc
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d_model = config.hidden_size
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    in_features = out_proj[0].weight.shape[0 if row.out_layout == "conv1d" else 1]
    if in_features != n_heads * d_head:
        raise UnsupportedModel(
            f"{family}: output projection takes {in_features} features, expected heads x d_head = {n_heads * d_head}"
        )
    return Architecture(
        family=family,
        n_layers=len(layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        d_model=d_model,
        d_vocab=model.get_output_embeddings().weight.shape[0],
        layers=layers,
        attn=attn,
        out_proj=out_proj,
        mlp=mlp,
        row=row,
        attn_write=attn_write,
        mlp_write=mlp_write,
        mlp_read=mlp_read,
    )
