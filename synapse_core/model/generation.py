"""The decoding loop shared by plain and traced generation.

One forward pass per new token over a KV cache. Step s feeds the position that predicts token s,
so anything a hook records at the last position during step s belongs to generated token s.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..common.errors import BadInput
from ..hooks.dispatch import SiteFns, hooks
from .loading import ModelHandle

Progress = Callable[[int, int, str], None]  # (done, total, message)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen."""

    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = whole vocabulary
    seed: int = 0  # used when temperature > 0

    def check(self) -> "Sampling":
        if self.temperature < 0:
            raise BadInput(f"temperature {self.temperature} is negative")
        if self.top_k < 0:
            raise BadInput(f"top_k {self.top_k} is negative")
        return self


@dataclass(frozen=True)
class Decoded:
    ids: list[int]  # the generated token ids
    step_logits: torch.Tensor  # (step, d_vocab), the logits each token was chosen from
    stopped_on_eos: bool


def decode(handle: ModelHandle, input_ids: torch.Tensor, max_new_tokens: int, fns: SiteFns,
           sampling: Sampling = Sampling(), progress: Progress | None = None,
           on_step: Callable[[int], None] | None = None) -> Decoded:
    """Generate up to max_new_tokens after input_ids (1, pos) with the site functions in force."""
    if max_new_tokens < 1:
        raise BadInput(f"max new tokens must be at least 1 (got {max_new_tokens})")
    sampling.check()
    generator = None
    if sampling.temperature > 0:
        generator = torch.Generator(device="cpu").manual_seed(sampling.seed)
    model = handle.model
    ids: list[int] = []
    logits_seen = []
    stopped = False
    cache = DynamicCache(config=model.config)
    with torch.inference_mode(), hooks(model, handle.arch, fns):
        step_input = input_ids
        for step in range(max_new_tokens):
            out = model(input_ids=step_input, past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[0, -1].float()
            logits_seen.append(logits)
            token = _choose(logits, sampling, generator)
            ids.append(token)
            if on_step:
                on_step(step)
            if progress:
                progress(step + 1, max_new_tokens, f"token {step + 1}/{max_new_tokens}")
            if token in handle.eos_ids:
                stopped = True
                break
            step_input = torch.tensor([[token]], device=input_ids.device)
    return Decoded(ids=ids, step_logits=torch.stack(logits_seen).cpu(), stopped_on_eos=stopped)


def _choose(logits: torch.Tensor, sampling: Sampling, generator) -> int:
    if sampling.temperature == 0:
        return int(logits.argmax())
    scaled = logits / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(scaled, min(sampling.top_k, scaled.shape[-1])).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))
