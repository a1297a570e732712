"""Full token x token attention patterns of one head, computed on demand.

A TraceResult keeps only the attention of the position that predicted each generated token
(step, layer, head, k_pos); the whole (q_pos, k_pos) matrix of every head would cost
layers x heads x pos^2 floats per run. The UI asks for one head at a time instead.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..arch.spec import normalize_masks
from ..common.errors import BadInput
from ..hooks.dispatch import hooks
from ..hooks.masking import mask_fns, merge_fns
from ..model.loading import ModelHandle


def attention_matrix(handle: ModelHandle, ids: Sequence[int], layer: int, head: int, masks=()) -> np.ndarray:
    """Attention probabilities of one head over a token sequence: (q_pos, k_pos), float32.

    Runs one forward pass over `ids` (e.g. a trace's prompt ids followed by its generated ids)
    with `masks` in force, as during the traced run, so that row i is where position i looked.
    Rows sum to 1 over k_pos <= q_pos (causal) unless the head itself is masked at the attention
    level, in which case its probabilities read 0.

    >>> attention_matrix(handle, result.prompt_ids, layer=3, head=1).shape
    (9, 9)
    """
    handle.arch.check_head(layer, head)
    ids = [int(i) for i in ids]
    if not ids:
        raise BadInput("no tokens to compute attention over: give at least one token id")
    if len(ids) > handle.max_context:
        raise BadInput(f"{len(ids)} tokens do not fit in the model's context of {handle.max_context} tokens")
    vocab = handle.arch.d_vocab
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise BadInput(f"token id {bad[0]} does not exist: the vocabulary has ids 0-{vocab - 1}")
    masks = normalize_masks(masks, handle.arch)
    captured: list[torch.Tensor] = []

    def capture(probs):  # (batch, head, q_pos, k_pos)
        captured.append(probs[0, head].float().cpu())

    # masks first, so a head masked at the attention level reads 0 here as it did in the trace
    fns = merge_fns(mask_fns(masks), {(layer, "attn.pattern"): [capture]})
    with torch.inference_mode(), hooks(handle.model, handle.arch, fns):
        handle.model(input_ids=torch.tensor([ids], device=handle.device))
    assert len(captured) == 1, f"expected one pattern from layer {layer}, got {len(captured)}"
    return captured[0].numpy()
