"""What a quarantine costs: the side effects of a set of head or feature masks, measured before it is set.

Against the model with the masks now in force ("before"), the same model with the new masks added
("after") is scored on
  - general text: cross-entropy and perplexity, scored the standard way (perplexity.py), with a
    paired bootstrap interval over documents;
  - capabilities: the shipped prompts in named groups (capabilities.py): accuracy on the expected
    answer before and after, top-1 agreement of after with before, mean and worst KL(before || after)
    of the next-token distribution, and the prompts whose answer flips;
  - the target: the behaviour the quarantine is for (a discovery's prompt and tokens, or typed).
A report of no new masks (or of masks already in force) reads zero change, KL 0 and no flips.
A report is an experiment: `experiments.costs.run_cost` answers the same config from the store.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..arch.spec import FeatureMask, HeadMask, mask_name, normalize_masks, order_masks, parse_head
from ..common.errors import BadInput
from ..common.hashing import content_hash
from ..interventions.featureops import feature_mask, is_feature_name
from ..interventions.metrics import kl_divergence, next_token_metrics, resolve_target
from ..interventions.promptset import PromptCase
from ..model.loading import ModelHandle
from ..model.mapper import Mapper
from ..model.tokens import token_strings
from .capabilities import Capability, expected_ids, next_token_logits
from .perplexity import RESAMPLES, TextDocs, TextScore, bootstrap, check_window, score_text

VERSION = 1  # bump when results of the same config would change
CostProgress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class CostConfig:
    """Everything a cost report depends on; its content hash is the experiment id."""

    model: str
    fingerprint: str
    dtype: str
    heads: tuple[HeadMask | FeatureMask, ...]  # the masks whose cost is measured (heads, features), added to `masks`
    masks: tuple[HeadMask | FeatureMask, ...]  # masks in force: the "before" model
    text_name: str | None  # "corpus held-out split", a file name, or None (no general text)
    text_digest: str | None  # TextDocs.digest
    window: int
    capabilities: tuple[Capability, ...]
    targets: tuple[PromptCase, ...] = ()  # the behaviour the quarantine is for
    resamples: int = RESAMPLES
    seed: int = 0
    version: int = VERSION
    kind: str = "cost"
    metric: str = "perplexity"  # what the History list calls this kind's measure

    @property
    def hash(self) -> str:
        return content_hash(self.kind, self)

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(t.prompt for t in self.targets)

    @property
    def title(self) -> str:
        names = ", ".join(mask_name(m) for m in self.heads[:6]) + (" \u2026" if len(self.heads) > 6 else "")
        return f"cost of quarantining {names or 'nothing'}"

    @property
    def added(self) -> tuple[HeadMask | FeatureMask, ...]:
        """The masks of the "after" model: those in force and the new ones."""
        return order_masks((*self.masks, *self.heads))


def cost_config(handle: ModelHandle, heads, masks=(), text: TextDocs | None = None, window: int = 256,
                capabilities=None, targets=(), level: str = "projection", seed: int = 0) -> CostConfig:
    """Validate a cost request. `heads` are HeadMask, HeadRef or "L.H" (at `level`), and FeatureMask or a
    feature's name (layers.15.resid.post.sae.1234); a head or feature that does not exist is BadInput naming it."""
    from .capabilities import default_capabilities

    wanted = []
    for h in heads:
        if isinstance(h, str) and is_feature_name(h):
            wanted.append(feature_mask(h, handle.arch.d_model))
            continue
        ref = parse_head(h) if isinstance(h, str) else h
        wanted.append(ref if isinstance(ref, (HeadMask, FeatureMask)) else HeadMask(ref.layer, ref.head, level))
    new = normalize_masks(wanted, handle.arch)
    if check_window(window) > handle.max_context:
        raise BadInput(f"window {window} is longer than the model's context of {handle.max_context} tokens")
    caps = tuple(default_capabilities() if capabilities is None else capabilities)
    if not caps:
        raise BadInput("the capability prompt set is empty")
    expected_ids(handle, caps)
    targets = tuple(targets)
    for case in targets:
        resolve_target(handle, case.target, case.contrast)
    return CostConfig(model=handle.name, fingerprint=handle.fingerprint, dtype=str(handle.dtype), heads=new,
                      masks=normalize_masks(masks, handle.arch), text_name=text.name if text else None,
                      text_digest=text.digest if text else None, window=check_window(window),
                      capabilities=caps, targets=targets, seed=int(seed))


@dataclass(frozen=True)
class TextCost:
    """General text before and after."""

    name: str
    window: int
    documents: int
    windows: int
    tokens: int  # tokens of text in the kept windows
    predicted: int  # tokens predicted (tokens - windows)
    ce_before: float  # mean cross-entropy, nats
    ce_after: float
    perplexity_before: float  # exp(ce_before)
    perplexity_after: float
    ce_interval: tuple[float, float]  # 95% bootstrap interval of ce_after - ce_before
    perplexity_interval: tuple[float, float]  # ... of perplexity_after / perplexity_before - 1
    bootstrap_unit: str  # "document", or "window" for a text of one document
    resamples: int

    @property
    def perplexity_change(self) -> float:
        """perplexity_after / perplexity_before - 1 (0.021 = +2.1%)."""
        return self.perplexity_after / self.perplexity_before - 1.0


@dataclass(frozen=True)
class Flip:
    """A capability prompt whose answer changed."""

    group: str
    prompt: str
    expected: str
    before: str  # top-1 token before
    after: str  # top-1 token after
    kl: float  # KL(before || after), nats


@dataclass(frozen=True)
class GroupCost:
    """One group of capability prompts, before and after."""

    group: str
    prompts: int
    accuracy_before: float  # share whose top-1 is the expected answer's first token
    accuracy_after: float
    agreement: float  # share whose top-1 after equals the top-1 before
    mean_kl: float  # KL(before || after) of the next-token distribution, nats
    worst_kl: float
    flipped: tuple[Flip, ...]


@dataclass(frozen=True)
class TargetCost:
    """The behaviour the quarantine is for, before and after."""

    prompt: str
    target: str
    contrast: str | None
    prob_before: float  # p(target)
    prob_after: float
    logit_diff_before: float | None  # logit(target) - logit(contrast)
    logit_diff_after: float | None
    top_before: str
    top_after: str


@dataclass(frozen=True, eq=False)
class CostReport:
    model: str
    fingerprint: str
    heads: tuple[HeadMask, ...]  # the masks measured
    masks: tuple[HeadMask, ...]  # in force before
    text: TextCost | None  # None when no general text was scored (see notes)
    groups: tuple[GroupCost, ...]
    targets: tuple[TargetCost, ...]
    seconds: float  # the whole report (a cached "before" text score not counted)
    forward_passes: int
    notes: tuple[str, ...] = ()

    @property
    def flipped(self) -> tuple[Flip, ...]:
        return tuple(f for g in self.groups for f in g.flipped)

    @property
    def capability_prompts(self) -> int:
        return sum(g.prompts for g in self.groups)

    def verdict(self) -> str:
        """One plain sentence: "lowers p(' Sydney') by 0.38; perplexity +2.1%; 3 of 120 capability
        prompts change answer: ..."."""
        parts = []
        for t in self.targets[:1]:
            change = t.prob_after - t.prob_before
            parts.append(f"{'lowers' if change <= 0 else 'raises'} p({t.target!r}) by {abs(change):.2f}"
                         + (f" ({t.top_before!r} \u2192 {t.top_after!r} on top)" if t.top_before != t.top_after else ""))
        if self.text is not None:
            lo, hi = self.text.perplexity_interval
            parts.append(f"perplexity {self.text.perplexity_change:+.1%} (95% CI {lo:+.1%} to {hi:+.1%})")
        flips = self.flipped
        shown = ", ".join(f"{f.prompt[-30:]!r} {f.before!r}\u2192{f.after!r}" for f in flips[:3])
        parts.append(f"{len(flips)} of {self.capability_prompts} capability prompts change answer"
                     + (f": {shown}" + (" \u2026" if len(flips) > 3 else "") if flips else ""))
        return "; ".join(parts)

    def headline(self) -> str:
        text = f"perplexity {self.text.perplexity_change:+.1%} \u00b7 " if self.text else ""
        return f"{text}{len(self.flipped)}/{self.capability_prompts} prompts flip"

    def summary(self) -> str:
        """The short evidence line kept with a quarantine."""
        return self.verdict()

    def to_json(self) -> dict:
        text = None if self.text is None else dict(asdict(self.text), perplexity_change=self.text.perplexity_change)
        return {
            "model": self.model, "fingerprint": self.fingerprint,
            "heads": [mask_name(m) for m in self.heads], "levels": [m.level for m in self.heads],
            "masks_in_force": [mask_name(m) for m in self.masks],
            "perplexity_before": None if text is None else text["perplexity_before"],
            "perplexity_after": None if text is None else text["perplexity_after"],
            "tokens": None if text is None else text["tokens"], "text": text,
            "capabilities": [asdict(g) for g in self.groups],
            "flipped": [asdict(f) for f in self.flipped],
            "targets": [asdict(t) for t in self.targets],
            "verdict": self.verdict(), "seconds": self.seconds, "forward_passes": self.forward_passes,
            "notes": list(self.notes),
        }

    def csv_rows(self) -> list[dict]:
        return [{"group": g.group, "prompts": g.prompts, "accuracy_before": g.accuracy_before,
                 "accuracy_after": g.accuracy_after, "agreement": g.agreement, "mean_kl": g.mean_kl,
                 "worst_kl": g.worst_kl, "flipped": len(g.flipped)} for g in self.groups]


def text_cost(before: TextScore, after: TextScore, docs: TextDocs, resamples: int, seed: int) -> TextCost:
    unit, ce_ci, ppl_ci = bootstrap(before, after, resamples, seed)
    return TextCost(name=docs.name, window=before.window, documents=len(set(before.doc_of.tolist())),
                    windows=len(before.doc_of), tokens=before.tokens, predicted=int(before.predicted.sum()),
                    ce_before=before.mean_ce, ce_after=after.mean_ce, perplexity_before=before.perplexity,
                    perplexity_after=after.perplexity, ce_interval=ce_ci, perplexity_interval=ppl_ci,
                    bootstrap_unit=unit, resamples=resamples)


def capability_cost(handle: ModelHandle, caps, before: torch.Tensor, after: torch.Tensor) -> tuple[GroupCost, ...]:
    """Per-group costs from the next-token logits (n_prompts, d_vocab) before and after."""
    expected = torch.tensor(expected_ids(handle, caps))
    top_b, top_a = before.argmax(-1), after.argmax(-1)
    kl = kl_divergence(before, after)
    out = []
    for group in dict.fromkeys(c.group for c in caps):
        idx = [i for i, c in enumerate(caps) if c.group == group]
        sel = torch.tensor(idx)
        flips = tuple(Flip(group, caps[i].prompt, caps[i].expected, *token_strings(handle, [top_b[i], top_a[i]]),
                           float(kl[i])) for i in idx if top_b[i] != top_a[i])
        out.append(GroupCost(group, len(idx), float((top_b[sel] == expected[sel]).float().mean()),
                             float((top_a[sel] == expected[sel]).float().mean()),
                             float((top_b[sel] == top_a[sel]).float().mean()), float(kl[sel].mean()),
                             float(kl[sel].max()), flips))
    return tuple(out)


def target_cost(handle: ModelHandle, targets, before: torch.Tensor, after: torch.Tensor) -> tuple[TargetCost, ...]:
    out = []
    for case, b, a in zip(targets, before, after):
        t = resolve_target(handle, case.target, case.contrast)
        mb, ma = next_token_metrics(handle, b, t), next_token_metrics(handle, a, t)
        out.append(TargetCost(case.prompt, case.target, case.contrast, mb.target_prob, ma.target_prob, mb.logit_diff,
                              ma.logit_diff, mb.top_token, ma.top_token))
    return tuple(out)


def prompts_of(config: CostConfig) -> list[str]:
    """The prompts a report runs: the capability prompts, then the targets'."""
    return [c.prompt for c in config.capabilities] + [t.prompt for t in config.targets]


def cost_report(handle: ModelHandle, config: CostConfig, text: TextDocs | None = None,
                text_before: TextScore | None = None, progress: CostProgress | None = None,
                logits_before: torch.Tensor | None = None, mapper: Mapper | None = None) -> CostReport:
    """Measure the cost of `config.heads` against `config.masks` (see the module docstring).

    text: the general text (its digest must match the config's); text_before: its score with the
    masks in force when already known (the store keeps it: it is the same for every report);
    logits_before: likewise the next-token logits (n_prompts, d_vocab) of prompts_of(config);
    mapper: where the forward passes run (model.mapper: here, or on the job engine's Ray actors).
    forward_passes counts the passes reported back: each one here, one a shard on Ray.
    """
    t0 = time.perf_counter()
    if config.fingerprint != handle.fingerprint:
        raise BadInput(f"cost report {config.hash} is for weights {config.fingerprint}, not {handle.fingerprint}")
    if (text.digest if text else None) != config.text_digest:
        raise BadInput(f"the text given ({text.name if text else 'none'}) is not the one the report was asked for "
                       f"({config.text_name or 'none'})")
    passes, notes = 0, list(text.notes if text else ())

    def step(stage):
        def fn(done, total):
            nonlocal passes
            passes += 1
            if progress:
                progress(stage, done, total)
        return fn

    caps = config.capabilities
    prompts = prompts_of(config)
    before = logits_before if logits_before is not None else next_token_logits(handle, prompts, config.masks,
                                                                                  step("capabilities before"), mapper)
    if before.shape[0] != len(prompts):
        raise BadInput(f"{before.shape[0]} rows of logits given for {len(prompts)} prompts")
    same = set(config.added) == set(config.masks)  # nothing new: after is before, exactly
    after = before if same else next_token_logits(handle, prompts, config.added, step("capabilities after"), mapper)
    groups = capability_cost(handle, caps, before[:len(caps)], after[:len(caps)])
    targets = target_cost(handle, config.targets, before[len(caps):], after[len(caps):])
    tcost = None
    if text is not None:
        if text_before is None:
            text_before = score_text(handle, text, config.window, config.masks, step("text before"), mapper)
        text_after = text_before if same else score_text(handle, text, config.window, config.added,
                                                         step("text after"), mapper)
        tcost = text_cost(text_before, text_after, text, config.resamples, config.seed)
    else:
        notes.append("no general text was scored: install the corpus (bash synapse_core/features/install_corpus.sh) "
                     "or give a text file")
    return CostReport(model=handle.name, fingerprint=handle.fingerprint, heads=config.heads, masks=config.masks,
                      text=tcost, groups=groups, targets=targets, seconds=time.perf_counter() - t0,
                      forward_passes=passes, notes=tuple(notes))
