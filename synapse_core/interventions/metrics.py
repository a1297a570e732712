"""What an intervention did to the next-token distribution, measured against the clean run.

Every metric reads the logits at the last position (the one that predicts the next token):
target probability and log-probability, the logit difference against a contrast token, the KL
divergence KL(clean || intervened), and the top-1 token and whether it changed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common.errors import BadInput
from ..model.loading import ModelHandle
from ..model.tokens import single_token_id, token_strings

METRICS = ("log_prob", "target_prob", "logit_diff", "kl")
METRIC_LABELS = {
    "log_prob": "log p(target)",
    "target_prob": "p(target)",
    "logit_diff": "logit(target) - logit(contrast)",
    "kl": "KL(clean || intervened), nats",
}


@dataclass(frozen=True)
class Target:
    """The token a run is scored on, and the optional contrast token."""

    text: str  # as the user typed it
    id: int  # the token scored: the first token of `text`
    token: str  # that token decoded
    contrast_text: str | None = None
    contrast_id: int | None = None
    contrast_token: str | None = None
    warnings: tuple[str, ...] = ()  # several tokens (scored on the first), leading-space ambiguity

    @property
    def has_contrast(self) -> bool:
        return self.contrast_id is not None


@dataclass(frozen=True)
class Metrics:
    """The next-token distribution of one run, summarised against a Target."""

    target_prob: float  # p(target) at the last position
    log_prob: float  # log p(target), natural log
    logit_diff: float | None  # logit(target) - logit(contrast); None without a contrast
    top_id: int  # the most likely next token
    top_token: str
    top_prob: float

    def value(self, metric: str) -> float | None:
        """The named metric (not "kl", which needs two runs)."""
        if metric == "kl":
            raise BadInput("kl compares two runs: use the result's kl_divergence")
        check_metric(metric)
        return getattr(self, metric)


@dataclass(frozen=True)
class TopToken:
    """One row of a top-k next-token table."""

    id: int
    token: str
    prob: float
    logit: float


def check_metric(metric: str, target: Target | None = None) -> str:
    if metric not in METRICS:
        raise BadInput(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if metric == "logit_diff" and target is not None and not target.has_contrast:
        raise BadInput("metric logit_diff needs a contrast token: give one, or pick log_prob")
    return metric


def default_metric(target: Target) -> str:
    """logit_diff when a contrast token is given, else log_prob."""
    return "logit_diff" if target.has_contrast else "log_prob"


def resolve_target(handle: ModelHandle, target: str, contrast: str | None = None) -> Target:
    """Token ids of the target (and contrast), with the tokenizer's warnings.

    A text of several tokens is scored on its first token; a text whose first token changes with
    a leading space gets a warning showing both (see tokens.single_token_id).
    """
    tid, warnings = single_token_id(handle, target)
    cid, ctoken = None, None
    if contrast:
        cid, cwarn = single_token_id(handle, contrast)
        warnings = warnings + [f"contrast: {w}" for w in cwarn]
        if cid == tid:
            raise BadInput(f"target {target!r} and contrast {contrast!r} are the same token ({tid})")
        ctoken = token_strings(handle, [cid])[0]
    return Target(
        text=target,
        id=tid,
        token=token_strings(handle, [tid])[0],
        contrast_text=contrast or None,
        contrast_id=cid,
        contrast_token=ctoken,
        warnings=tuple(warnings),
    )


def next_token_metrics(handle: ModelHandle, logits: torch.Tensor, target: Target) -> Metrics:
    """Metrics of one run from its last-position logits (d_vocab,)."""
    logits = logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    top = int(log_probs.argmax())
    diff = None
    if target.has_contrast:
        diff = float(logits[target.id] - logits[target.contrast_id])
    return Metrics(
        target_prob=float(log_probs[target.id].exp()),
        log_prob=float(log_probs[target.id]),
        logit_diff=diff,
        top_id=top,
        top_token=token_strings(handle, [top])[0],
        top_prob=float(log_probs[top].exp()),
    )


def kl_divergence(clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || intervened) in nats over the last dimension.

    clean_logits (d_vocab,) or (batch, d_vocab); logits (batch, d_vocab) or (d_vocab,).
    Returns a tensor of the broadcast batch shape (a 0-d tensor for two vectors).
    """
    clean = torch.log_softmax(clean_logits.float(), dim=-1)
    other = torch.log_softmax(logits.float(), dim=-1)
    return (clean.exp() * (clean - other)).sum(-1).clamp_min(0.0)


def batch_scores(logits: torch.Tensor, target: Target, clean_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric for a batch of intervened runs at once.

    logits (batch, d_vocab) of the intervened runs; clean_logits (d_vocab,).
    Returns metric name -> (batch,) float32, plus "top1_changed" (batch,) bool and "top_id" (batch,).
    """
    logits = logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    out = {
        "log_prob": log_probs[:, target.id],
        "target_prob": log_probs[:, target.id].exp(),
        "kl": kl_divergence(clean_logits, logits),
        "top_id": log_probs.argmax(-1),
    }
    if target.has_contrast:
        out["logit_diff"] = logits[:, target.id] - logits[:, target.contrast_id]
    out["top1_changed"] = out["top_id"] != int(clean_logits.argmax())
    return out


def clean_value(metrics: Metrics, metric: str) -> float:
    """The clean run's value of a metric; 0 for kl (the clean run does not differ from itself)."""
    return 0.0 if metric == "kl" else float(metrics.value(metric))


def top_tokens(handle: ModelHandle, logits: torch.Tensor, k: int = 10) -> tuple[TopToken, ...]:
    """The k most likely next tokens of last-position logits (d_vocab,), most likely first."""
    if k < 1:
        raise BadInput(f"top-k {k} must be at least 1")
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    values, ids = torch.topk(probs, min(k, probs.shape[-1]))
    tokens = token_strings(handle, ids.tolist())
    return tuple(
        TopToken(id=int(i), token=t, prob=float(p), logit=float(logits[i])) for i, t, p in zip(ids, tokens, values)
    )
