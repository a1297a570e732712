"""The decoding loop shared by plain and traced generation.

One forward pass per new token over a KV cache. Step s feeds the position that predicts token s,
so anything a hook records at the last position during step s belongs to generated token s.
"""
from __future__ import annotations

import contextlib
import math
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
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise BadInput(f"temperature {self.temperature} must be a number, 0 or more (0 = greedy)")
        if self.top_k < 0:
            raise BadInput(f"top_k {self.top_k} is negative")
        return self


    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution a token is drawn from, given the logits (..., d_vocab): softmax of the
        logits over the temperature, restricted to the top_k largest. Greedy (temperature 0) puts
        all the mass on the argmax."""
        if self.temperature == 0:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        scaled = logits / self.temperature
        if self.top_k:
            kth = torch.topk(scaled, min(self.top_k, scaled.shape[-1]), dim=-1).values[..., -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        return torch.softmax(scaled, dim=-1)


@dataclass(frozen=True)
class Decoded:
    ids: list[int]  # the generated token ids
    step_logits: torch.Tensor  # (step, d_vocab), the logits each token was chosen from
    stopped_on_eos: bool
    sampled_probs: tuple[float, ...] = ()  # per step: p(token) under the distribution it was drawn from
    cache: object = None  # the KV cache after the last step (a DynamicCache), for a pass that continues it

    @property
    def model_probs(self) -> tuple[float, ...]:
        """Per step: p(token) under the model's own distribution (temperature 1, whole vocabulary)."""
        probs = torch.softmax(self.step_logits.float(), dim=-1)
        return tuple(float(probs[i, t]) for i, t in enumerate(self.ids))


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
    logits_seen, sampled = [], []
    stopped = False
    cache = DynamicCache(config=model.config)
    # no site functions: no dispatcher hooks at all (120 idle Python hooks a step on a 30-layer model)
    scope = hooks(model, handle.arch, fns) if fns else contextlib.nullcontext()
    with torch.inference_mode(), scope:
        step_input = input_ids
        for step in range(max_new_tokens):
            out = model(input_ids=step_input, past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[0, -1].float()
            logits_seen.append(logits)
            token, p = _choose(logits, sampling, generator)
            ids.append(token)
            sampled.append(p)
            if on_step:
                on_step(step)
            if progress:
                progress(step + 1, max_new_tokens, f"token {step + 1}/{max_new_tokens}")
            if token in handle.eos_ids:
                stopped = True
                break
            step_input = torch.tensor([[token]], device=input_ids.device)
    return Decoded(ids=ids, step_logits=torch.stack(logits_seen).cpu(), stopped_on_eos=stopped,
                   sampled_probs=tuple(sampled), cache=cache)


def _choose(logits: torch.Tensor, sampling: Sampling, generator) -> tuple[int, float]:
    """The next token and its probability under the distribution it was drawn from."""
    if sampling.temperature == 0:
        return int(logits.argmax()), 1.0
    probs = sampling.distribution(logits).cpu()
    token = int(torch.multinomial(probs, 1, generator=generator))
    return token, float(probs[token])
