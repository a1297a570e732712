"""One prompt, run clean and with interventions: what changed in the next-token distribution.

Both runs have the masks on (the quarantine list and any heads masked for the run), so the
difference is the interventions' alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..arch.spec import HeadMask, Intervention, normalize_masks
from ..hooks.masking import mask_fns, merge_fns
from ..model.loading import ModelHandle
from ..model.tokens import encode_prompt, token_strings
from .metrics import Metrics, Target, TopToken, kl_divergence, next_token_metrics, resolve_target, top_tokens
from .ops import OpSettings, forward_last, prepare


@dataclass(frozen=True)
class AblationResult:
    """A clean run and an intervened run of one prompt, compared at the next token."""

    model: str
    fingerprint: str  # weights the runs were made with
    prompt: str
    prompt_tokens: tuple[str, ...]
    target: Target
    interventions: tuple[Intervention, ...]
    settings: OpSettings
    clean: Metrics
    intervened: Metrics
    kl_divergence: float  # KL(clean || intervened) of the next-token distribution, nats
    top1_changed: bool  # the most likely next token differs
    clean_top: tuple[TopToken, ...]  # top-k next tokens of the clean run
    intervened_top: tuple[TopToken, ...]
    masks: tuple[HeadMask, ...]  # heads masked in both runs
    notes: tuple[str, ...] = ()  # how the operations were carried out ("positions aligned from the end", ...)
    warnings: tuple[str, ...] = ()  # target tokenization, prompt cut to the context

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(iv.name for iv in self.interventions)

    def delta(self, metric: str) -> float | None:
        """Intervened minus clean for a metric; None for logit_diff without a contrast."""
        if metric == "kl":
            return self.kl_divergence
        a, b = self.intervened.value(metric), self.clean.value(metric)
        return None if a is None or b is None else a - b

    def to_json(self) -> dict:
        """Everything, as plain JSON (exports, the History view)."""
        return {
            "model": self.model,
            "fingerprint": self.fingerprint,
            "prompt": self.prompt,
            "prompt_tokens": list(self.prompt_tokens),
            "target": asdict(self.target),
            "interventions": [dict(asdict(iv), name=iv.name) for iv in self.interventions],
            "settings": asdict(self.settings),
            "clean": asdict(self.clean),
            "intervened": asdict(self.intervened),
            "kl_divergence": self.kl_divergence,
            "top1_changed": self.top1_changed,
            "clean_top": [asdict(t) for t in self.clean_top],
            "intervened_top": [asdict(t) for t in self.intervened_top],
            "masks": [asdict(m) for m in self.masks],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }


def ablate(handle: ModelHandle, prompt: str, target: str | Target, interventions, contrast: str | None = None,
           masks=(), settings: OpSettings = OpSettings(), top_k: int = 10) -> AblationResult:
    """Run the prompt clean and with the interventions; compare the next-token distributions.

    >>> r = ablate(handle, "The capital of France is", " Paris", [Intervention(3, "attn.head", head=1)])
    >>> r.delta("log_prob")
    """
    masks = normalize_masks(masks, handle.arch)
    ids, warnings = encode_prompt(handle, prompt)
    if not isinstance(target, Target):
        target = resolve_target(handle, target, contrast)
    prepared = prepare(handle, ids, interventions, settings, masks)
    base = mask_fns(masks)
    clean_logits = forward_last(handle, ids, base)[0]
    logits = forward_last(handle, ids, merge_fns(base, prepared.table()))[0]
    clean = next_token_metrics(handle, clean_logits, target)
    intervened = next_token_metrics(handle, logits, target)
    return AblationResult(
        model=handle.name,
        fingerprint=handle.fingerprint,
        prompt=prompt,
        prompt_tokens=tuple(token_strings(handle, ids[0])),
        target=target,
        interventions=prepared.interventions,
        settings=settings,
        clean=clean,
        intervened=intervened,
        kl_divergence=float(kl_divergence(clean_logits, logits)),
        top1_changed=clean.top_id != intervened.top_id,
        clean_top=top_tokens(handle, clean_logits, top_k),
        intervened_top=top_tokens(handle, logits, top_k),
        masks=masks,
        notes=prepared.notes,
        warnings=tuple(warnings) + target.warnings,
    )
