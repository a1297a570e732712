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


def _zero_all(sae, indices: list[int]) -> tuple[SiteFn, SiteFn]:
    """(a reader at the layer's attn.pattern, the edit at the SAE's site): zero features at every position of
    the sequence but its first, as edit_fn does, error term kept.

    A forward may see only the end of the sequence (a cached decoding step, or a chunk run after a KV cache
    of the prompt), so "first" cannot be read off the site's own tensor. The reader sees the same forward's
    last attention row (batch, head, 1, k_pos): k_pos - pos is how many positions came before, and position
    0 of the site is the sequence's first only when none did. It reads one row and keeps the fused kernel.
    """
    edits = [FeatureEdit(i, "zero") for i in indices]
    keys: list[int] = []  # k_pos of the forward in flight; a fresh list per mask_fns call (one run)

    def read_keys(probs: torch.Tensor) -> None:  # (batch, head, 1, k_pos)
        keys[:] = [probs.shape[-1]]

    read_keys.last_row = True

    def fn(x: torch.Tensor) -> torch.Tensor:  # (batch, pos, d_model)
        n = x.shape[1]
        before = keys.pop() - n if keys else 0
        if before == 0:
            return edit_fn(sae, edits, list(range(n)))(x)  # edit_fn leaves position 0 alone
        # every position here follows the sequence's first: shift them past edit_fn's position 0
        return edit_fn(sae, edits, list(range(1, n + 1)))(torch.cat([x[:, :1], x], dim=1))[:, 1:]

    return read_keys, fn


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
        read_keys, fn = _zero_all(sae, sorted(set(indices)))
        out[(info.layer, "attn.pattern")].append(read_keys)
        out[(info.layer, info.site)].append(fn)
    return dict(out)


use_feature_sites(feature_mask_fns)
