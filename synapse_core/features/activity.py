"""Which features are active at each token of a text: the Trace page's feature view.

One truncated forward pass up to the deepest SAE's layer reads every SAE's site; each SAE encodes
its site, and each token keeps its strongest features. Position 0 (the separator) is left out, as
everywhere the SAEs are used (see evaluate.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import catalog
from .harvest import capture, parse_site
from .labels import human_labels
from .stats import FeatureStats


@dataclass(frozen=True)
class TokenFeatures:
    sae: str  # layers.15.resid.post.sae
    position: int
    token: int  # token id at that position
    features: tuple[tuple[int, float], ...]  # (feature index, activation), strongest first


@dataclass(frozen=True)
class FeatureActivity:
    ids: tuple[int, ...]  # the text's token ids
    per_token: tuple[TokenFeatures, ...]  # by SAE, then position (positions >= 1)
    labels: dict  # feature name -> label, for every feature listed


def feature_activity(handle, ids: list[int], saes: list[str], top: int = 5,
                     dirs: list[Path] | None = None) -> FeatureActivity:
    """The `top` strongest features of each SAE at every position >= 1 of ids (pos,)."""
    infos = [catalog.find_sae(name, dirs) for name in saes]
    sites = {info.name: parse_site(info.hook_name, handle.arch.n_layers) for info in infos}
    acts = capture(handle, torch.tensor([list(ids)]), list(set(sites.values()))) if infos else {}
    rows, labels = [], {}
    for info in infos:
        sae = catalog.load(info.name, handle.arch.d_model, dirs)[1]
        with torch.no_grad():
            vals, idx = sae.encode_topk(acts[sites[info.name]][0].float())  # (pos, k)
        names = FeatureStats(info.path).meta["labels"] if info.has_stats else None
        human = human_labels(info.name)
        for p in range(1, len(ids)):
            order = vals[p].argsort(descending=True)[:top]
            feats = tuple((int(idx[p, j]), float(vals[p, j])) for j in order if vals[p, j] > 0)
            rows.append(TokenFeatures(info.name, p, int(ids[p]), feats))
            for f, _ in feats:
                labels[f"{info.name}.{f}"] = human[f].text if f in human else names[f] if names else ""
    return FeatureActivity(tuple(ids), tuple(rows), labels)
