"""Q-, K- and V-composition scores between heads, from the model's own weights (Elhage et al.,
"A Mathematical Framework for Transformer Circuits"). Layer norms and biases are left out.

Every score is ||W_B-side @ W_OV^A||_F / (||W_B-side||_F ||W_OV^A||_F) and lies in [0, 1]. The
Frobenius norms of the d_model x d_model products are computed exactly from d_head x d_head Gram
matrices (||U M V||_F^2 = tr(M^T U^T U M V V^T)), so a whole layer pair costs milliseconds.
"""
from __future__ import annotations

import torch

from ..arch.adapters import Architecture
from ..common.errors import BadInput


def _weights(arch: Architecture, layer: int, heads: list[int] | None) -> dict[str, torch.Tensor]:
    weights = arch.head_weights(layer)
    # on the CPU: two layers' weights may live on different devices (a device map)
    return {k: (v if heads is None else v[heads]).detach().to("cpu", torch.float64) for k, v in weights.items()}


def _frob2(u_gram: torch.Tensor, m: torch.Tensor, v_gram: torch.Tensor) -> torch.Tensor:
    # ||U M V||_F^2 = tr(M^T G_U M G_V) = sum((G_U M) * (M G_V)) for symmetric Gram matrices
    # G_U = U^T U, G_V = V V^T; batched over leading dims
    return ((u_gram @ m) * (m @ v_gram)).sum(dim=(-2, -1))


def composition_scores(arch: Architecture, layer_a: int, layer_b: int, cache: dict | None = None,
                       heads_a: list[int] | None = None, heads_b: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Scores of sender heads in layer_a composing into receiver heads in layer_b.

    Returns {"q", "k", "v"}, each (head_a, head_b) over heads_a x heads_b (default: all heads).
    layer_a must be earlier than layer_b. `cache` (a dict the caller keeps for one computation)
    saves re-reading a layer's weights.
    """
    if not layer_a < layer_b:
        raise BadInput(f"a sender must come before its receiver (layers {layer_a} and {layer_b})")
    for layer, heads in ((layer_a, heads_a), (layer_b, heads_b)):
        for head in heads if heads is not None else (0,):
            arch.check_head(layer, head)
    cache = {} if cache is None else cache
    for layer, heads in ((layer_a, heads_a), (layer_b, heads_b)):
        key = (layer, None if heads is None else tuple(heads))
        if key not in cache:
            cache[key] = _weights(arch, layer, heads)
    a = cache[(layer_a, None if heads_a is None else tuple(heads_a))]
    b = cache[(layer_b, None if heads_b is None else tuple(heads_b))]
    # sender OV = W_O^A (d_model, d) @ W_V^A (d, d_model)
    gram_vA = a["W_V"] @ a["W_V"].transpose(-1, -2)  # (head, d, d)
    gram_oA = a["W_O"].transpose(-1, -2) @ a["W_O"]
    norm_ovA = torch.einsum("hij,hji->h", gram_oA, gram_vA).clamp_min(1e-30).sqrt()  # (head_a,)
    gram_q = b["W_Q"] @ b["W_Q"].transpose(-1, -2)
    gram_k = b["W_K"] @ b["W_K"].transpose(-1, -2)
    gram_oB = b["W_O"].transpose(-1, -2) @ b["W_O"]
    gram_vB = b["W_V"] @ b["W_V"].transpose(-1, -2)
    norm_qk = torch.einsum("hij,hji->h", gram_q, gram_k).clamp_min(1e-30).sqrt()  # (head_b,)
    norm_ovB = torch.einsum("hij,hji->h", gram_oB, gram_vB).clamp_min(1e-30).sqrt()

    def score(u_gram_b, left_b, right_a, norm_b):
        # M[b_head, a_head] = left_b @ right_a, each d x d
        m = left_b[None] @ right_a[:, None]  # (head_a, head_b, d_head, d_head)
        num = _frob2(u_gram_b[None], m, gram_vA[:, None]).clamp_min(0).sqrt()
        return (num / (norm_ovA[:, None] * norm_b[None, :])).to(torch.float32)

    return {
        # Q: W_K^T W_Q W_OV^A  (U = W_K^T, M = W_Q W_O^A)
        "q": score(gram_k, b["W_Q"], a["W_O"], norm_qk),
        # K: W_Q^T W_K W_OV^A  (U = W_Q^T, M = W_K W_O^A)
        "k": score(gram_q, b["W_K"], a["W_O"], norm_qk),
        # V: W_O^B W_V^B W_OV^A  (U = W_O^B, M = W_V^B W_O^A)
        "v": score(gram_oB, b["W_V"], a["W_O"], norm_ovB),
    }
