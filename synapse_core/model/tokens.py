"""Prompt encoding and token display, with the checks every entry point needs."""
from __future__ import annotations

import torch

from ..common.errors import BadInput
from .loading import ModelHandle


def encode_prompt(handle: ModelHandle, prompt: str, reserve: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Token ids (1, pos) of a prompt, cut from the left to fit the context with `reserve` tokens
    to spare. Returns the ids and a list of warnings (empty when nothing was cut)."""
    if prompt is None or not prompt.strip():
        raise BadInput("the prompt is empty: type some text to run the model on")
    ids = handle.tokenizer(prompt, return_tensors="pt").input_ids
    warnings = []
    limit = handle.max_context - reserve
    if limit < 1:
        raise BadInput(f"{reserve} new tokens do not fit in the model's context of {handle.max_context} tokens")
    if ids.shape[1] > limit:
        warnings.append(
            f"the prompt has {ids.shape[1]} tokens; the model's context is {handle.max_context}, so only the "
            f"last {limit} tokens were used"
        )
        ids = ids[:, -limit:]
    return ids.to(handle.device), warnings


def token_strings(handle: ModelHandle, ids) -> list[str]:
    """Each id decoded on its own, so a list of pieces that concatenate to the text."""
    return [handle.tokenizer.decode([int(i)]) for i in ids]


def single_token_id(handle: ModelHandle, text: str) -> tuple[int, list[str]]:
    """The id of a target token given as text. A text of several tokens is scored on its first
    token; the warnings say so, and say when a word typed without its leading space is another
    token than the spaced word the model predicts after a word, showing both splits."""
    if not text:
        raise BadInput("the target token is empty")
    ids = handle.tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise BadInput(f"{text!r} encodes to no token")
    warnings = []
    if len(ids) > 1:
        pieces = token_strings(handle, ids)
        warnings.append(f"{text!r} is {len(ids)} tokens {pieces}; it is scored on its first token {pieces[0]!r}")
    other = text[1:] if text.startswith(" ") else " " + text
    other_ids = handle.tokenizer(other, add_special_tokens=False).input_ids
    # A one-token target is taken as meant, except a word typed without its leading space (the usual
    # slip: after a word the model predicts " Paris", not "Paris") when the spaced word is another token.
    # ' Sydney' (one token) is never nagged because 'Sydney' happens to split into three.
    slip = not text.startswith(" ") and text[:1].isalnum() and other_ids[:1] != ids[:1]
    if slip:
        warnings.append(
            f"{text!r} is split as {token_strings(handle, ids)} but {other!r} as "
            f"{token_strings(handle, other_ids)}; mind the leading space"
        )
    return ids[0], warnings
