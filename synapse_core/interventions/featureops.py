"""Feature interventions as site functions: the bridge from an Intervention naming a feature
(`layers.15.resid.post.sae.1234`) to features.intervene's edit, at the Intervention's positions; and
feature masks (a quarantined feature, zero-ablated in every run), whose site functions this module
builds for hooks.masking."""
from __future__ import annotations

from collections import defaultdict

import torch

from ..arch.spec import FeatureMask, Intervention
from ..common.errors import BadInput
from ..features.catalog import find_sae, parse_feature
from ..features.intervene import FeatureEdit, edit_fn, feature_intervention, sae_for
from ..hooks.dispatch import SiteFn
from ..hooks.masking import use_feature_sites


def feature_site_fn(handle, iv: Intervention, idx: list[int]) -> tuple[SiteFn, tuple[str, ...]]:
    """The site function of a feature Intervention at token positions idx (resolved), and its notes."""
    _, index = parse_feature(iv.feature)
    sae = sae_for(iv.feature, handle.arch.d_model)
    fn = edit_fn(sae, [FeatureEdit(index, iv.op, iv.value or 0.0)], idx)
    notes = [f"{iv.op} {iv.feature}" + ("" if iv.op == "zero" else f" (value {iv.value:g})")
             + ": the SAE's error term kept, so only that feature's part of the site changes"]
    if 0 in idx:
        notes.append("position 0 (the separator, never encoded by the SAE) left unchanged")
    return fn, tuple(notes)


def feature_mask(name: str, d_model: int | None = None) -> FeatureMask:
    """The mask of feature `name`, checked against the SAE catalog (BadInput naming a bad name, SAE or
    index) and, given d_model, against the model's width.

    >>> feature_mask("layers.15.resid.post.sae.1234")  # doctest: +SKIP
    FeatureMask(layer=15, feature='layers.15.resid.post.sae.1234')
    """
    iv = feature_intervention(name.strip(), "zero")
    if d_model is not None:
        sae_for(iv.feature, d_model)
    return FeatureMask(iv.layer, iv.feature)


def is_feature_name(text: str) -> bool:
    """Whether `text` names a feature (an SAE name plus an index) rather than a head."""
    try:
        parse_feature(text)
    except BadInput:
        return False
    return True


def _zero_all(sae, indices: list[int]) -> SiteFn:
    """Zero features at every position a forward sees, the first position of a sequence excepted as
    edit_fn does; a one-position input is a cached decoding step (never the sequence's first), so it is
    edited. Error term kept."""
    edits = [FeatureEdit(i, "zero") for i in indices]

    def fn(x: torch.Tensor) -> torch.Tensor:  # (batch, pos, d_model)
        if x.shape[1] == 1:
            return edit_fn(sae, edits, [1])(torch.cat([x, x], dim=1))[:, 1:]
        return edit_fn(sae, edits, list(range(x.shape[1])))(x)

    return fn


def feature_mask_fns(masks: tuple[FeatureMask, ...]) -> dict[tuple[int, str], list[SiteFn]]:
    """One site function per SAE: its masked features zeroed together (one encode, as one ablation of them all)."""
    by_sae: dict[str, list[int]] = defaultdict(list)
    for m in masks:
        sae_name, index = parse_feature(m.feature)
        by_sae[sae_name].append(index)
    out: dict[tuple[int, str], list[SiteFn]] = defaultdict(list)
    for sae_name, indices in by_sae.items():
        info = find_sae(sae_name)
        sae = sae_for(f"{sae_name}.{indices[0]}", info.d_in)
        out[(info.layer, info.site)].append(_zero_all(sae, sorted(set(indices))))
    return dict(out)


use_feature_sites(feature_mask_fns)
