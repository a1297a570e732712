"""Interventions on SAE features: zero one, clamp it to a value, or steer along its decoder direction.

The SAE's error term is kept: at each chosen position the site becomes x + (x_hat' - x_hat), where
x_hat is the SAE's reconstruction and x_hat' the reconstruction with the feature's activation
changed. What the SAE does not explain passes through untouched, and an edit that changes nothing
leaves the site (and the logits) exactly as they were. Position 0 (the separator, never encoded by
the SAEs; see evaluate.py) is left alone.

    zero    a_f -> 0                       x + (0 - a_f) W_dec[f]
    clamp   a_f -> value                   x + (value - a_f) W_dec[f]
    steer   add value x W_dec[f]           x + value W_dec[f]   (whether or not the feature fires)
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..arch.spec import FEATURE_OPS, Intervention
from ..common.errors import BadInput
from . import catalog
from .sae import TopKSAE

# the Intervention site of each SAE site (the hook it writes back into)
COMPONENT = {"resid.post": "resid", "attn.out": "attn", "mlp.out": "mlp"}
_SAES: dict[tuple, TopKSAE] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class FeatureEdit:
    index: int  # the feature
    op: str  # zero | clamp | steer
    value: float = 0.0  # clamp: the activation it is held at; steer: the multiple of W_dec[f] added


def feature_intervention(name: str, op: str = "zero", value: float | None = None, positions="all") -> Intervention:
    """The Intervention on feature `name` (layers.15.resid.post.sae.1234), checked against the catalog.

    >>> feature_intervention("layers.15.resid.post.sae.7", "clamp", 4.0).name  # doctest: +SKIP
    'layers.15.resid.post.sae.7'
    """
    sae, index = catalog.parse_feature(name)
    info = catalog.find_sae(sae)
    if not 0 <= index < info.d_sae:
        raise BadInput(f"feature {index} does not exist: {sae} has features 0-{info.d_sae - 1}")
    if info.site not in COMPONENT:
        raise BadInput(f"{sae} reads {info.site}, which the model does not read back: features of "
                       f"{', '.join(COMPONENT)} SAEs can be intervened on")
    if op in ("clamp", "steer") and value is None:
        raise BadInput(f"{op} needs a value (--value): the activation to clamp to, or the multiple of the decoder "
                       "direction to add")
    return Intervention(info.layer, COMPONENT[info.site], op, None, positions, None, f"{info.name}.{index}",
                        None if value is None or op == "zero" else float(value))


def sae_for(name: str, d_model: int) -> TopKSAE:
    """The float32 SAE of a feature's name, loaded once per process (the catalog folder's stamp)."""
    sae_name, _ = catalog.parse_feature(name)
    info = catalog.find_sae(sae_name)
    key = (str(info.path), (info.path / "sae_weights.safetensors").stat().st_mtime_ns, d_model)
    with _LOCK:
        if key not in _SAES:
            _SAES[key] = catalog.load(sae_name, d_model)[1]
        return _SAES[key]


def edit_fn(sae: TopKSAE, edits: Sequence[FeatureEdit], positions: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A site function (batch, pos, d_model) -> same applying `edits` at `positions`, error term kept."""
    for e in edits:
        sae.check_feature(e.index)
        if e.op not in FEATURE_OPS:
            raise BadInput(f"feature operation {e.op!r} is not one of {', '.join(FEATURE_OPS)}")
    idx = [p for p in positions if p != 0]

    def fn(x: torch.Tensor) -> torch.Tensor:
        if not edits or not idx:
            return x
        i = torch.tensor(idx, device=x.device)
        sel = x[:, i].float()  # (batch, n, d_model)
        z = sae.encode(sel)  # (batch, n, d_sae)
        delta = torch.zeros_like(sel)
        for e in edits:
            a = z[..., e.index]
            change = {"zero": -a, "clamp": e.value - a, "steer": torch.full_like(a, e.value)}[e.op]
            delta = delta + change.unsqueeze(-1) * sae.W_dec[e.index].float()
        out = x.clone()
        out[:, i] = (sel + delta).to(x.dtype)
        return out

    return fn

