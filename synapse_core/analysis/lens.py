"""The logit lens: the residual stream at every layer and position read as if it were the last layer's,
through the final norm and the unembedding (nostalgebraist, 2020).

Row 0 is the token embeddings, row l + 1 the residual stream after layer l, so the last row is exactly
the model's own next-token distribution. For each row and position: the top tokens with their
probabilities, and the probability and rank (0 = most likely) of one chosen token.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..arch.spec import normalize_masks
from ..common.errors import BadInput
from ..hooks.dispatch import hooks
from ..hooks.masking import mask_fns, merge_fns
from ..model.loading import ModelHandle
from ..model.tokens import encode_prompt, single_token_id, token_strings

# where each family keeps its final norm (path from the causal LM); the rest: model.norm
FINAL_NORMS = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm",
               "opt": "model.decoder.final_layer_norm"}
METHOD = "logit lens: residual stream -> final norm -> unembedding, per layer and position"


@dataclass(frozen=True, eq=False)
class LensResult:
    """The logit lens of one prompt."""

    model: str
    prompt: str
    prompt_tokens: tuple[str, ...]
    token: str  # the chosen token, decoded
    token_id: int
    rows: tuple[str, ...]  # "embed", then "0" .. "n_layers - 1": the residual stream after that layer
    probs: np.ndarray  # (row, pos) p(token) read at that row and position
    ranks: np.ndarray  # (row, pos) rank of the token there, 0 = top
    top_tokens: tuple[tuple[tuple[str, ...], ...], ...]  # (row, pos, k) most likely tokens
    top_probs: np.ndarray  # (row, pos, k) their probabilities
    warnings: tuple[str, ...] = ()
    method: str = METHOD

    def first_top_row(self, position: int = -1) -> str | None:
        """The first row at which the token is the top prediction at a position; None if never."""
        hits = np.nonzero(self.ranks[:, position] == 0)[0]
        return self.rows[int(hits[0])] if len(hits) else None

    def to_json(self) -> dict:
        return {"model": self.model, "prompt": self.prompt, "prompt_tokens": list(self.prompt_tokens),
                "token": self.token, "token_id": self.token_id, "rows": list(self.rows),
                "probs": self.probs.round(6).tolist(), "ranks": self.ranks.tolist(),
                "top_tokens": [[list(t) for t in row] for row in self.top_tokens],
                "top_probs": self.top_probs.round(6).tolist(), "method": self.method,
                "warnings": list(self.warnings)}


def _prompt_ids(handle: ModelHandle, prompt) -> tuple[torch.Tensor, list[str]]:
    """(1, pos) ids of a text (cut to the context, with warnings), or of given ids (checked)."""
    if isinstance(prompt, str):
        return encode_prompt(handle, prompt)
    ids = [int(i) for i in prompt]
    if not ids:
        raise BadInput("the prompt is empty: no token ids given")
    if len(ids) > handle.max_context:
        raise BadInput(f"{len(ids)} token ids do not fit in the model's context of {handle.max_context} tokens")
    return torch.tensor([ids], device=handle.device), []


def _final_norm(handle: ModelHandle):
    obj = handle.model
    for part in FINAL_NORMS.get(handle.arch.family, "model.norm").split("."):
        obj = getattr(obj, part)
    return obj


def logit_lens(handle: ModelHandle, prompt: str | Sequence[int], token: str | None = None, masks=(), top_k: int = 5,
               token_id: int | None = None) -> LensResult:
    """The logit lens of a prompt, for `token` (default: the model's own next-token prediction).

    `prompt` is a text, or the token ids (pos,) of one, as a trace recorded them (so the lens reads
    exactly the positions the trace ran on); `token_id` names the token by id instead of by text.

    >>> r = logit_lens(handle, "The Eiffel Tower is in the city of", " Paris")
    >>> r.first_top_row()
    """
    if top_k < 1:
        raise BadInput(f"top-k {top_k} must be at least 1")
    masks = normalize_masks(masks, handle.arch)
    ids, warnings = _prompt_ids(handle, prompt)
    arch = handle.arch
    found: dict = {}

    def reader(key):
        def fn(x):
            found[key] = x[0].detach()

        return fn

    keys = [(0, "attn.out"), (0, "mlp.out")] + [(layer, "resid.post") for layer in range(arch.n_layers)]
    with torch.inference_mode(), hooks(handle.model, arch, merge_fns(mask_fns(masks), {k: [reader(k)] for k in keys})):
        handle.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        post = [found[(layer, "resid.post")] for layer in range(arch.n_layers)]
        streams = [post[0] - found[(0, "attn.out")] - found[(0, "mlp.out")], *post]  # embeddings, then each layer
        norm, head = _final_norm(handle), handle.model.get_output_embeddings()
        cap = getattr(handle.model.config, "final_logit_softcapping", None)
        rows = []
        for stream in streams:
            logits = head(norm(stream)).float()  # (pos, d_vocab)
            if cap:
                logits = torch.tanh(logits / cap) * cap
            rows.append(torch.log_softmax(logits, dim=-1))
        if token_id is not None:
            if not 0 <= token_id < rows[0].shape[-1]:
                raise BadInput(f"token id {token_id} does not exist: the vocabulary has ids 0-{rows[0].shape[-1] - 1}")
        elif token is None:
            token_id = int(rows[-1][-1].argmax())
        else:
            token_id, tw = single_token_id(handle, token)
            warnings = warnings + tw
        probs = np.stack([r[:, token_id].exp().cpu().numpy() for r in rows])
        ranks = np.stack([(r > r[:, token_id:token_id + 1]).sum(-1).cpu().numpy() for r in rows])
        k = min(top_k, rows[0].shape[-1])
        tops = [torch.topk(r, k, dim=-1) for r in rows]
    top_probs = np.stack([t.values.exp().cpu().numpy() for t in tops])
    top_tokens = tuple(tuple(tuple(token_strings(handle, pos_ids)) for pos_ids in t.indices.tolist()) for t in tops)
    text = prompt if isinstance(prompt, str) else handle.tokenizer.decode(ids[0])
    return LensResult(model=handle.name, prompt=text, prompt_tokens=tuple(token_strings(handle, ids[0])),
                      token=token_strings(handle, [token_id])[0], token_id=token_id,
                      rows=("embed", *(str(layer) for layer in range(arch.n_layers))), probs=probs,
                      ranks=ranks.astype(np.int64), top_tokens=top_tokens, top_probs=top_probs,
                      warnings=tuple(warnings))
