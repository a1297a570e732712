"""Verify a quarantine: re-run the evidence prompt and compare the unwanted token's probability
with the masks in force and on the raw model."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arch.spec import HeadMask, normalize_masks
from ..hooks.dispatch import hooks
from ..hooks.masking import mask_fns
from ..model.loading import ModelHandle
from ..model.tokens import encode_prompt, single_token_id, token_strings


@dataclass(frozen=True)
class Verification:
    """The target's next-token probability after the prompt, with and without the masks."""

    prompt: str
    target: str  # the target as given
    target_token: str  # the token it is scored on
    prob_masked: float  # with `masks` in force
    prob_raw: float  # the raw model: no masks at all
    top_masked: str  # the most likely next token with the masks
    top_raw: str  # ... and without
    masks: tuple[HeadMask, ...]
    warnings: tuple[str, ...] = ()

    @property
    def suppressed(self) -> bool:
        """True when the masks lower the target's probability."""
        return self.prob_masked < self.prob_raw


def verify(handle: ModelHandle, prompt: str, target: str, masks) -> Verification:
    """Probability of `target` as the next token after `prompt`, masked and raw.

    >>> v = verify(handle, "The Eiffel Tower is in the city of", " Paris", MaskStore().masks(handle))
    >>> v.prob_raw, v.prob_masked
    (0.81, 0.02)
    """
    masks = normalize_masks(masks, handle.arch)
    ids, warnings = encode_prompt(handle, prompt)
    target_id, target_warnings = single_token_id(handle, target)
    with torch.inference_mode():
        raw = handle.model(input_ids=ids).logits[0, -1].float()  # (d_vocab,)
        with hooks(handle.model, handle.arch, mask_fns(masks)):
            masked = handle.model(input_ids=ids).logits[0, -1].float()  # (d_vocab,)
    p_raw, p_masked = raw.softmax(-1), masked.softmax(-1)
    return Verification(
        prompt=prompt, target=target, target_token=token_strings(handle, [target_id])[0],
        prob_masked=float(p_masked[target_id]), prob_raw=float(p_raw[target_id]),
        top_masked=token_strings(handle, [int(p_masked.argmax())])[0],
        top_raw=token_strings(handle, [int(p_raw.argmax())])[0],
        masks=masks, warnings=tuple(warnings + target_warnings),
    )
