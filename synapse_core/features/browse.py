"""What the feature browser lists: an SAE's features found by label or by a token they fire on,
sorted by density or by activation; read from the stored statistics only, never the model."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.errors import BadInput
from . import catalog
from .labels import human_labels
from .stats import FeatureStats

SORTS = ("density", "activation")
SEARCH_BY = ("label", "token")


@dataclass(frozen=True)
class FeatureRow:
    feature: int
    name: str  # layers.15.resid.post.sae.1234
    label: str  # a person's label when one is stored, else the automatic one
    density: float
    max_activation: float


def find(sae: str, query: str = "", by: str = "label", sort: str = "density", decode: Callable | None = None,
         limit: int = 100, dirs: list[Path] | None = None) -> list[FeatureRow]:
    """Features of `sae` whose label contains `query` (by="label") or whose top contexts fire on a
    token containing it (by="token", needs decode(ids) -> str); every live feature when the query
    is empty. Sorted by density or max activation, highest first; dead features left out."""
    if sort not in SORTS:
        raise BadInput(f"sort {sort!r} is not one of {', '.join(SORTS)}")
    if by not in SEARCH_BY:
        raise BadInput(f"search by {by!r} is not one of {', '.join(SEARCH_BY)}")
    info = catalog.find_sae(sae, dirs)
    st = FeatureStats(info.path)
    a = st.arrays
    human = human_labels(info.name)
    labels = [human[i].text if i in human else lab for i, lab in enumerate(st.meta["labels"])]
    live = np.flatnonzero(a["density"] > 0)
    q = query.strip().lower()
    if q and by == "label":
        live = [i for i in live if q in labels[i].lower() or q in st.meta["labels"][i].lower()]
    elif q:
        if decode is None:
            raise BadInput("searching by token needs the model's tokenizer")
        ctx, pos = a["top_ctx"], a["top_pos"]
        fired = a["contexts"][np.maximum(ctx, 0), np.maximum(pos, 0)]  # (d_sae, N_TOP) token ids
        vocab: dict[int, bool] = {}
        for t in np.unique(fired):
            vocab[int(t)] = q in decode([int(t)]).lower()
        live = [i for i in live if any(c >= 0 and vocab[int(t)] for c, t in zip(ctx[i], fired[i]))]
    key = a["density"] if sort == "density" else a["max_act"]
    order = sorted(live, key=lambda i: -float(key[i]))[:limit]
    return [FeatureRow(int(i), f"{info.name}.{int(i)}", labels[i], float(a["density"][i]), float(a["max_act"][i]))
            for i in order]
