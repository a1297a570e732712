"""Feature interventions as site functions: the bridge from an Intervention naming a feature
(`layers.15.resid.post.sae.1234`) to features.intervene's edit, at the Intervention's positions."""
from __future__ import annotations

from ..arch.spec import Intervention
from ..features.catalog import parse_feature
from ..features.intervene import FeatureEdit, edit_fn, sae_for
from ..hooks.dispatch import SiteFn


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
