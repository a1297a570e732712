"""Which source tokens drove one generated token: gradient x input on the token embeddings."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..arch.spec import normalize_masks
from ..common.errors import BadInput
from ..hooks.dispatch import hooks
from ..hooks.masking import mask_fns
from ..model.loading import ModelHandle
from ..model.tokens import token_strings

METHOD = "gradient x input: d log p(token) / d embedding, dotted with the embedding, per source position"


@dataclass(frozen=True)
class InfluenceResult:
    output_index: int  # which generated token (0 = the first)
    output_token: str
    source_tokens: tuple[str, ...]  # prompt tokens, then the generated tokens before output_index
    scores: np.ndarray  # (pos,) signed contribution of each source token
    log_prob: float  # log-probability of the output token in this forward pass
    method: str = METHOD


def token_influence(handle: ModelHandle, prompt_ids, generated_ids, output_index: int, masks=()) -> InfluenceResult:
    """Gradient x input attribution of generated token `output_index` to every earlier token.

    prompt_ids and generated_ids are sequences of token ids (as in a TraceResult).
    """
    if not generated_ids:
        raise BadInput("the run generated no tokens, so there is no output token to explain")
    if not 0 <= output_index < len(generated_ids):
        raise BadInput(f"output token {output_index} does not exist: the run generated tokens 0-{len(generated_ids) - 1}")
    masks = normalize_masks(masks, handle.arch)
    source = list(prompt_ids) + list(generated_ids[:output_index])
    target = int(generated_ids[output_index])
    ids = torch.tensor([source], device=handle.device)
    embed = handle.model.get_input_embeddings()
    with torch.enable_grad(), hooks(handle.model, handle.arch, mask_fns(masks)):
        embeds = embed(ids).detach().requires_grad_(True)  # (batch, pos, d_model)
        logits = handle.model(inputs_embeds=embeds).logits[0, -1].float()
        log_prob = torch.log_softmax(logits, dim=-1)[target]
        (grad,) = torch.autograd.grad(log_prob, embeds)
    scores = (grad * embeds.detach()).sum(-1)[0].float().cpu().numpy()
    return InfluenceResult(
        output_index=output_index,
        output_token=handle.tokenizer.decode([target]),
        source_tokens=tuple(token_strings(handle, source)),
        scores=scores,
        log_prob=float(log_prob.detach()),
    )
