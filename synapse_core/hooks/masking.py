"""Head masks as hook-site functions, and merging of site-function tables."""
from __future__ import annotations

from collections import defaultdict

import torch

from ..arch.spec import HeadMask
from .dispatch import SiteFn


def _zero_heads(heads: list[int], dim: int) -> SiteFn:
    index = torch.tensor(sorted(set(heads)))

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x.index_fill_(dim, index.to(x.device), 0.0)
        return x

    return fn


def mask_fns(masks: tuple[HeadMask, ...]) -> dict[tuple[int, str], list[SiteFn]]:
    """Site functions that switch the masked heads off.

    projection: zero the head's slice of the output projection's input   # z: (batch, pos, head, d_head)
    attention:  zero the head's attention probabilities                   # (batch, head, q_pos, k_pos)
    """
    by_site: dict[tuple[int, str], list[int]] = defaultdict(list)
    for mask in masks:
        if mask.level in ("projection", "both"):
            by_site[(mask.layer, "attn.z")].append(mask.head)
        if mask.level in ("attention", "both"):
            by_site[(mask.layer, "attn.pattern")].append(mask.head)
    return {key: [_zero_heads(heads, dim=-2 if key[1] == "attn.z" else 1)] for key, heads in by_site.items()}


def merge_fns(*tables) -> dict[tuple[int, str], list[SiteFn]]:
    """Concatenate site-function tables; earlier tables run first at a shared site."""
    out: dict[tuple[int, str], list[SiteFn]] = defaultdict(list)
    for table in tables:
        for key, fns in table.items():
            out[key].extend(fns)
    return dict(out)
