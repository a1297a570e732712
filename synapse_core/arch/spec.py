"""Names of components and interventions. Cache keys, UI labels, CLI arguments and catalog
column names all derive from these, so they never disagree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..common.errors import BadInput
from .adapters import Architecture

MASK_LEVELS = ("projection", "attention", "both")
TARGET_SITES = ("attn.head", "attn", "mlp", "resid")
OPS = ("zero", "mean", "patch", "steer")
FEATURE_OPS = ("zero", "clamp", "steer")  # on an SAE feature, its SAE's error term kept


@dataclass(frozen=True, order=True)
class HeadRef:
    """One attention head."""

    layer: int
    head: int

    @property
    def name(self) -> str:
        return f"layers.{self.layer}.attn.head.{self.head}"

    @property
    def short(self) -> str:
        return f"{self.layer}.{self.head}"

    def check(self, arch: Architecture) -> "HeadRef":
        arch.check_head(self.layer, self.head)
        return self


@dataclass(frozen=True, order=True)
class HeadMask:
    """A head switched off: at the projection (its slice of the output projection's input is zeroed),
    at the attention tensor (its probabilities are zeroed), or both."""

    layer: int
    head: int
    level: str = "projection"

    def __post_init__(self):
        if self.level not in MASK_LEVELS:
            raise BadInput(f"mask level {self.level!r} is not one of {', '.join(MASK_LEVELS)}")

    @property
    def ref(self) -> HeadRef:
        return HeadRef(self.layer, self.head)


_HEAD_RE = re.compile(r"^\s*(?:layers\.)?(-?\d+)\s*[.:]\s*(?:attn\.head\.)?(-?\d+)\s*$")


def parse_head(text: str) -> HeadRef:
    """Parse "L.H" (or "layers.L.attn.head.H") into a HeadRef.

    >>> parse_head("23.3")
    HeadRef(layer=23, head=3)
    """
    match = _HEAD_RE.match(text)
    if not match:
        raise BadInput(f"{text!r} is not a head: write LAYER.HEAD, e.g. 23.3")
    return HeadRef(int(match.group(1)), int(match.group(2)))


def parse_heads(text: str | None) -> list[HeadRef]:
    """Parse a comma- or space-separated list of heads ("3.1, 5.7"); empty text gives []."""
    if not text:
        return []
    return [parse_head(part) for part in re.split(r"[,\s]+", text.strip()) if part]


@dataclass(frozen=True, order=True)
class FeatureMask:
    """An SAE feature switched off: zero-ablated at its SAE's site in every run, the SAE's error term kept,
    so only that feature's part of the site changes (hooks.masking applies it; interventions.featureops
    builds it from a feature's name and checks it against the SAE catalog).

    >>> FeatureMask(15, "layers.15.resid.post.sae.1234").short
    'layers.15.resid.post.sae.1234'
    """

    layer: int  # the layer whose site the feature's SAE reads
    feature: str  # the feature's name: its SAE's name plus the index, layers.15.resid.post.sae.1234

    level = "feature"  # not a field: where a head mask says projection | attention | both
    head = None  # not a field: a feature mask masks no head (readers keyed by (layer, head) match none)

    @property
    def short(self) -> str:
        return self.feature


def mask_name(mask) -> str:
    """How a mask of either kind is written: "L.H" for a head, the feature's name for a feature."""
    return mask.feature if isinstance(mask, FeatureMask) else f"{mask.layer}.{mask.head}"


def order_masks(masks) -> tuple:
    """Masks of either kind, de-duplicated, heads (by layer and head) before features (by layer and name)."""
    masks = set(masks)
    return (*sorted(m for m in masks if not isinstance(m, FeatureMask)),
            *sorted(m for m in masks if isinstance(m, FeatureMask)))


def head_masks(masks) -> tuple[HeadMask, ...]:
    """The head masks among masks of either kind (what head-by-head readers verify or draw)."""
    return tuple(m for m in masks if isinstance(m, HeadMask))


def feature_masks(masks) -> tuple[FeatureMask, ...]:
    return tuple(m for m in masks if isinstance(m, FeatureMask))


def normalize_masks(masks, arch: Architecture) -> tuple[HeadMask | FeatureMask, ...]:
    """Validate masks against the model and return them sorted and de-duplicated: heads first, then features.

    Accepts HeadMask, HeadRef or "L.H" strings, and FeatureMask (its layer is checked here, its SAE
    where it is built).
    """
    heads, features = set(), set()
    for mask in masks or ():
        if isinstance(mask, FeatureMask):
            if not 0 <= mask.layer < arch.n_layers:
                raise BadInput(f"feature {mask.feature} sits at layer {mask.layer}, which does not exist: the model "
                               f"has layers 0-{arch.n_layers - 1}")
            features.add(mask)
            continue
        if isinstance(mask, str):
            mask = parse_head(mask)
        if isinstance(mask, HeadRef):
            mask = HeadMask(mask.layer, mask.head)
        arch.check_head(mask.layer, mask.head)
        heads.add(mask)
    return order_masks(heads | features)


@dataclass(frozen=True)
class Intervention:
    """One intervention on one component.

    site: attn.head (one head's output), attn (the attention block's output), mlp (the MLP
    block's output), resid (the residual stream after the layer).
    op: zero | mean | patch | steer.
    positions: "all", "last", or a tuple of token positions.
    source: for patch, the source prompt; for steer, a description of the direction.
    feature: an SAE feature's name (layers.15.resid.post.sae.1234) whose SAE reads `site`; op is then
    zero, clamp (to `value`) or steer (adds `value` x its decoder direction).
    """

    layer: int
    site: str
    op: str = "zero"
    head: int | None = None
    positions: str | tuple[int, ...] = "all"
    source: str | None = None
    feature: str | None = None
    value: float | None = None

    def __post_init__(self):
        if self.site not in TARGET_SITES:
            raise BadInput(f"site {self.site!r} is not one of {', '.join(TARGET_SITES)}")
        if self.feature is not None:
            if self.op not in FEATURE_OPS or self.head is not None:
                raise BadInput(f"a feature is zeroed, clamped or steered ({', '.join(FEATURE_OPS)}), not {self.op!r}")
        elif self.op not in OPS:
            raise BadInput(f"operation {self.op!r} is not one of {', '.join(OPS)}")
        if (self.site == "attn.head") != (self.head is not None):
            raise BadInput("a head is given exactly when the site is attn.head")

    @property
    def name(self) -> str:
        if self.feature is not None:
            return self.feature
        if self.site == "attn.head":
            return f"layers.{self.layer}.attn.head.{self.head}"
        return f"layers.{self.layer}.{self.site}"

    def check(self, arch: Architecture) -> "Intervention":
        if self.head is None:
            if not 0 <= self.layer < arch.n_layers:
                raise BadInput(f"layer {self.layer} does not exist: the model has layers 0-{arch.n_layers - 1}")
        else:
            arch.check_head(self.layer, self.head)
        return self
