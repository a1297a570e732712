"""Head and feature masks as hook-site functions, and merging of site-function tables.

A feature mask needs its SAE, which lives two layers up (features): the layer that builds feature
masks (interventions.featureops) hands this module the function that turns one into a site function
(`use_feature_sites`), so every run that applies masks applies both kinds through `mask_fns`.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from ..arch.spec import FeatureMask, HeadMask
from ..common.errors import BadInput
from .dispatch import SiteFn

FeatureSites = Callable[[tuple[FeatureMask, ...]], dict[tuple[int, str], list[SiteFn]]]  # masks -> site table
_FEATURE_SITES: list[FeatureSites] = []


def use_feature_sites(fn: FeatureSites) -> None:
    """Install the builder of feature masks' site functions (interventions.featureops does, on import)."""
    _FEATURE_SITES[:] = [fn]


def _zero_heads(heads: list[int], dim: int) -> SiteFn:
    index = torch.tensor(sorted(set(heads)))

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x.index_fill_(dim, index.to(x.device), 0.0)
        return x

    return fn


def mask_fns(masks: tuple[HeadMask | FeatureMask, ...]) -> dict[tuple[int, str], list[SiteFn]]:
    """Site functions that switch the masked heads and features off.

    projection: zero the head's slice of the output projection's input   # z: (batch, pos, head, d_head)
    attention:  zero the head's attention probabilities                   # (batch, head, q_pos, k_pos)
    feature:    subtract the feature's decoder write at its SAE's site     # (batch, pos, d_model)
    """
    by_site: dict[tuple[int, str], list[int]] = defaultdict(list)
    features = tuple(m for m in masks if isinstance(m, FeatureMask))
    if features and not _FEATURE_SITES:
        raise BadInput(f"feature mask {features[0].feature} cannot be applied: no SAE loader is installed "
                       "(import synapse_core.interventions.featureops)")
    for mask in masks:
        if isinstance(mask, FeatureMask):
            continue
        if mask.level in ("projection", "both"):
            by_site[(mask.layer, "attn.z")].append(mask.head)
        if mask.level in ("attention", "both"):
            by_site[(mask.layer, "attn.pattern")].append(mask.head)
    out = {key: [_zero_heads(heads, dim=-2 if key[1] == "attn.z" else 1)] for key, heads in by_site.items()}
    return merge_fns(out, _FEATURE_SITES[0](features)) if features else out


def merge_fns(*tables) -> dict[tuple[int, str], list[SiteFn]]:
    """Concatenate site-function tables; earlier tables run first at a shared site."""
    out: dict[tuple[int, str], list[SiteFn]] = defaultdict(list)
    for table in tables:
        for key, fns in table.items():
            out[key].extend(fns)
    return dict(out)
