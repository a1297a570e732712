"""Which source tokens drove one generated token: integrated gradients on the token embeddings."""
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

BASELINES = ("pad",)  # the zero embedding is a degenerate point of norm-layer models: IG from it does not converge
TOLERANCE = 0.01  # completeness: |sum of scores - (log p(input) - log p(baseline))| <= 1% of that change
START_INTERVALS = 16  # an even grid of intervals on the path to start from
MAX_POINTS = 256  # at most this many gradients on the path; the error reached is reported either way
CHUNK = 16  # points per forward + backward pass


def method_text(points: int, token: str) -> str:
    start = f"the embedding of {token!r} (the pad token, or end-of-sequence without one)"
    return (f"integrated gradients of log p(token) on the token embeddings, from {start} at every source position "
            f"to the real ones: midpoint rule on intervals of the path, halved where the gradient's estimate disagrees "
            f"with the change of log p across them ({points} gradients), so that the scores add up to "
            "log p(input) - log p(baseline)")


@dataclass(frozen=True)
class InfluenceResult:
    output_index: int  # which generated token (0 = the first)
    output_token: str
    source_tokens: tuple[str, ...]  # prompt tokens, then the generated tokens before output_index
    scores: np.ndarray  # (pos,) each source token's part of log p(input) - log p(baseline)
    log_prob: float  # log p(output token) with the real embeddings
    baseline_log_prob: float  # log p(output token) with every source embedding set to the baseline
    completeness_error: float  # |sum(scores) - (log_prob - baseline_log_prob)| / |log_prob - baseline_log_prob|
    points: int  # points of the path where the gradient was taken
    passes: int  # forward + backward passes it took (CHUNK points each, the last maybe fewer)
    baseline: str  # "pad": the pad token's embedding at every source position
    method: str


def token_influence(handle: ModelHandle, prompt_ids, generated_ids, output_index: int, masks=(),
                    baseline: str = "pad", tolerance: float = TOLERANCE) -> InfluenceResult:
    """Integrated gradients of log p(generated token `output_index`) on every earlier token's embedding.

    The path runs from the baseline (the pad token's embedding, or the end-of-sequence token's where
    the tokenizer has no pad token, at every source position; position information the model adds
    itself is kept) to the real embeddings. The integral
    is a midpoint rule on intervals that are halved where an interval's gradient estimate disagrees
    with the change of log p across it, until the scores sum to log p(input) - log p(baseline) within
    `tolerance` of that change (completeness), or MAX_POINTS; the error reached is reported. Each
    gradient is one row of a batched forward + backward pass (CHUNK rows a pass).
    prompt_ids and generated_ids are sequences of token ids (as in a TraceResult).
    """
    if not generated_ids:
        raise BadInput("the run generated no tokens, so there is no output token to explain")
    if not 0 <= output_index < len(generated_ids):
        raise BadInput(f"output token {output_index} does not exist: the run generated tokens 0-{len(generated_ids) - 1}")
    if baseline not in BASELINES:
        raise BadInput(f"baseline {baseline!r} is not one of {', '.join(BASELINES)}")
    masks = normalize_masks(masks, handle.arch)
    source = list(prompt_ids) + list(generated_ids[:output_index])
    target = int(generated_ids[output_index])
    embed = handle.model.get_input_embeddings()
    with torch.no_grad():
        x = embed(torch.tensor([source], device=handle.device))[0]  # (pos, d_model)
        b = _baseline(handle, embed, x, baseline)
    with hooks(handle.model, handle.arch, mask_fns(masks)):
        path = _Path(handle, x, b, target)
        path.refine(tolerance)
    scores, error = path.scores()
    return InfluenceResult(
        output_index=output_index,
        output_token=handle.tokenizer.decode([target]),
        source_tokens=tuple(token_strings(handle, source)),
        scores=scores.float().cpu().numpy(),
        log_prob=path.f[1.0],
        baseline_log_prob=path.f[0.0],
        completeness_error=error,
        points=path.points,
        passes=path.passes,
        baseline=baseline,
        method=method_text(path.points, handle.tokenizer.decode([baseline_token(handle)])),
    )


def _baseline(handle: ModelHandle, embed, x: torch.Tensor, baseline: str) -> torch.Tensor:
    pad = baseline_token(handle)
    return embed(torch.tensor([pad], device=x.device)).expand_as(x).clone()


def baseline_token(handle: ModelHandle) -> int:
    """The pad token, or where the tokenizer has none (SmolLM2), the end-of-sequence token that
    transformers pads with then."""
    tok = handle.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise BadInput(f"{handle.name}'s tokenizer has neither a pad nor an end-of-sequence token")
    return int(pad)


def _log_probs(handle: ModelHandle, embeds: torch.Tensor, target: int, grad: bool):
    """log p(target) at the last position for a batch of embeddings (batch, pos, d_model); with grad,
    also d log p / d embeds (each row's log p depends only on its own row)."""
    with torch.enable_grad() if grad else torch.no_grad():
        embeds = embeds.detach().requires_grad_(grad)
        logits = handle.model(inputs_embeds=embeds, logits_to_keep=1).logits[:, -1].float()
        log_p = torch.log_softmax(logits, dim=-1)[:, target]
        if not grad:
            return log_p, None
        (g,) = torch.autograd.grad(log_p.sum(), embeds)
    return log_p.detach(), g


class _Path:
    """The straight path b + alpha (x - b), alpha in [0, 1], cut into intervals. Each interval's integral
    is estimated by the midpoint rule, (b - a) * gradient(m) . delta with m its midpoint, and checked
    against the change of log p across it, f(b) - f(a). The midpoint rule never takes the gradient at
    alpha = 0 or 1, so each interval costs one gradient."""

    def __init__(self, handle: ModelHandle, x: torch.Tensor, b: torch.Tensor, target: int):
        self.handle, self.x, self.b, self.target = handle, x, b, target
        self.delta = x - b  # (pos, d_model)
        self.f: dict[float, float] = {}  # alpha -> log p
        self.d: dict[float, torch.Tensor] = {}  # alpha -> (pos,) gradient . delta at each source position
        self.passes = 0
        ends = _log_probs(handle, torch.stack([b, x]), target, grad=False)[0]
        self.f[0.0], self.f[1.0] = float(ends[0]), float(ends[1])
        grid = [i / START_INTERVALS for i in range(START_INTERVALS + 1)]
        self.intervals = list(zip(grid, grid[1:]))
        self.evaluate([(a + b) / 2 for a, b in self.intervals] + grid[1:-1])

    def evaluate(self, alphas: list[float]) -> None:
        for lo in range(0, len(alphas), CHUNK):
            chunk = alphas[lo:lo + CHUNK]
            a = torch.tensor(chunk, dtype=self.x.dtype, device=self.x.device)
            log_p, grads = _log_probs(self.handle, self.b[None] + a[:, None, None] * self.delta[None], self.target, True)
            dirs = (grads.double() * self.delta.double()[None]).sum(-1).cpu()  # (chunk, pos)
            for i, alpha in enumerate(chunk):
                self.f[alpha], self.d[alpha] = float(log_p[i]), dirs[i]
            self.passes += 1

    def _estimate(self, a: float, b: float) -> torch.Tensor:
        """(pos,) integral of gradient . delta over [a, b] by the midpoint rule."""
        return (b - a) * self.d[(a + b) / 2]

    def local_error(self, a: float, b: float) -> float:
        return abs(float(self._estimate(a, b).sum()) - (self.f[b] - self.f[a]))

    def scores(self) -> tuple[torch.Tensor, float]:
        """(pos,) scores and the completeness error relative to log p(x) - log p(b)."""
        scores = sum(self._estimate(a, b) for a, b in self.intervals)
        change = self.f[1.0] - self.f[0.0]
        return scores, abs(float(scores.sum()) - change) / max(abs(change), 1e-12)

    @property
    def points(self) -> int:
        return len(self.d)

    def refine(self, tolerance: float) -> None:
        """Halve the intervals with the largest local error (each half needs the gradient at its own
        midpoint: two new points), CHUNK points at a time, until completeness holds or MAX_POINTS."""
        while self.scores()[1] > tolerance and self.points + 2 <= MAX_POINTS:
            worst = sorted(self.intervals, key=lambda ab: self.local_error(*ab), reverse=True)
            worst = worst[:min(CHUNK, MAX_POINTS - self.points) // 2]
            new = []
            for a, b in worst:
                m = (a + b) / 2
                self.intervals.remove((a, b))
                self.intervals += [(a, m), (m, b)]
                new += [(a + m) / 2, (m + b) / 2]
            self.evaluate(new)
