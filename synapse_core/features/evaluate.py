"""Quality of an SAE on the held-out split: sparsity, reconstruction, and the model's loss with the
reconstruction spliced in.

Conventions (the same for every figure):
- Position 0 of each context (the separator that opens it) is never encoded: in this model its
  residual stream is 50-150x the norm of any other position, the SAE is not trained on it, and a
  spliced forward pass leaves it as it is. Every figure is over positions 1..ctx_len-1.
- Massive-activation dimensions: those whose mean square over the evaluation tokens is more than
  MASSIVE_DIM_RATIO times the median dimension's (layer 15: dims 507, 247, 308, together ~65% of
  the raw second moment). Massive positions: tokens whose norm exceeds MASSIVE_POS_RATIO times the
  median token norm. `fve_trimmed` leaves both out; `fve` keeps them.
- CE: mean next-token cross-entropy over every prediction of the evaluated contexts; the "zero"
  run sets the site to zero at the positions the SAE would replace.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..hooks import dispatch
from .harvest import Site, parse_site
from .sae import TopKSAE

MASSIVE_DIM_RATIO = 100.0
MASSIVE_POS_RATIO = 10.0
DENSE_FRACTION = 0.1


@dataclass(frozen=True)
class Quality:
    """Figures of one SAE on held-out tokens; fields are what the feature browser shows."""

    n_tokens: int  # evaluation tokens (positions >= 1) for the activation figures
    l0: float  # mean active latents per token
    dead_frac: float  # latents never active over the evaluation tokens
    dense_frac: float  # latents active on more than 10% of tokens
    fve: float  # fraction of variance explained, all dimensions
    fve_trimmed: float  # without massive dimensions and positions
    massive_dims: tuple[int, ...]
    n_massive_positions: int  # among positions >= 1
    ce_tokens: int  # predictions scored for the CE figures
    ce_clean: float
    ce_sae: float
    ce_zero: float
    loss_recovered: float  # (ce_zero - ce_sae) / (ce_zero - ce_clean)
    ce_increase: float  # ce_sae - ce_clean, nats

    def to_json(self) -> dict:
        d = asdict(self)
        d["massive_dims"] = list(self.massive_dims)
        return d


@dataclass(frozen=True)
class ActivationFigures:
    n_tokens: int
    l0: float
    dead_frac: float
    dense_frac: float
    fve: float
    fve_trimmed: float
    massive_dims: tuple[int, ...]
    n_massive_positions: int
    counts: np.ndarray  # (d_sae,) tokens each latent was active on


def activation_figures(sae: TopKSAE, acts: np.ndarray, targets: np.ndarray | None = None,
                       chunk: int = 4096) -> ActivationFigures:
    """L0, dead, dense and FVE over stored activations acts (n_ctx, pos, d_in) (position 0 left out).

    `targets` (n_ctx, pos, d_out): what a transcoder reconstructs; None for an SAE (targets = acts).
    """
    n_ctx, ctx, d = acts.shape
    x_all = np.asarray(acts[:, 1:], dtype=np.float32).reshape(-1, d)
    y_all = x_all if targets is None else np.asarray(targets[:, 1:], dtype=np.float32).reshape(len(x_all), -1)
    ms = (y_all.astype(np.float64) ** 2).mean(0)
    dims = tuple(int(i) for i in np.flatnonzero(ms > MASSIVE_DIM_RATIO * np.median(ms)))
    norms = np.linalg.norm(y_all, axis=1)
    keep_pos = norms <= MASSIVE_POS_RATIO * np.median(norms)
    keep_dim = np.ones(y_all.shape[1], dtype=bool)
    keep_dim[list(dims)] = False
    mean = y_all.mean(0, dtype=np.float64)
    mean_t = y_all[keep_pos].mean(0, dtype=np.float64)
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    sse = sst = sse_t = sst_t = 0.0
    active = 0
    with torch.no_grad():
        for i in range(0, len(x_all), chunk):
            x = torch.from_numpy(x_all[i:i + chunk])
            y = torch.from_numpy(y_all[i:i + chunk]).double()
            vals, idx = sae.encode_topk(x)
            on = vals > 0
            active += int(on.sum())
            counts += torch.bincount(idx[on], minlength=sae.cfg.d_sae)
            err = (sae.decode_sparse(vals, idx).double() - y).pow(2)
            dev = (y - torch.from_numpy(mean)).pow(2)
            dev_t = (y - torch.from_numpy(mean_t)).pow(2)
            kp = torch.from_numpy(keep_pos[i:i + chunk])
            kd = torch.from_numpy(keep_dim)
            sse += float(err.sum())
            sst += float(dev.sum())
            sse_t += float(err[kp][:, kd].sum())
            sst_t += float(dev_t[kp][:, kd].sum())
    n = len(x_all)
    return ActivationFigures(
        n_tokens=n, l0=active / n, dead_frac=float((counts == 0).float().mean()),
        dense_frac=float((counts > DENSE_FRACTION * n).float().mean()), fve=1 - sse / sst,
        fve_trimmed=1 - sse_t / sst_t, massive_dims=dims, n_massive_positions=int((~keep_pos).sum()),
        counts=counts.numpy())


def splice_fn(sae: TopKSAE, mode: str, keep_error: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A site function for hooks(): positions >= 1 replaced by the SAE's reconstruction ("sae")
    or by zeros ("zero"). keep_error adds back x - x_hat, which must leave the model unchanged."""
    def fn(x: torch.Tensor) -> torch.Tensor:  # (batch, pos, d_model)
        out = x.clone()
        rest = x[:, 1:]
        if mode == "zero":
            out[:, 1:] = 0
        else:
            rec = sae(rest.float()).to(x.dtype)
            out[:, 1:] = rec + (rest - rec) if keep_error else rec
        return out
    return fn


def ce_loss(handle, ids: torch.Tensor, fns: dict | None = None) -> tuple[float, int]:
    """Summed next-token cross-entropy of ids (batch, pos) and the number of predictions."""
    with torch.no_grad(), dispatch.hooks(handle.model, handle.arch, fns or {}):
        logits = handle.model(ids.to(handle.device), use_cache=False).logits  # (batch, pos, d_vocab)
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tgt = ids[:, 1:].to(lp.device)
    return float(-lp.gather(-1, tgt.unsqueeze(-1)).sum()), tgt.numel()


def ce_figures(handle, saes: dict[str, TopKSAE], tokens: np.ndarray, batch_size: int = 8,
               progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, float]]:
    """Clean, spliced and zero-ablated CE for several SAEs over the same contexts tokens (n_ctx, pos).

    saes maps a site name ('layers.15.resid.post') to its SAE; the clean run is shared.
    Returns {site: {ce_clean, ce_sae, ce_zero, ce_tokens}}.
    """
    sites = {name: parse_site(name, handle.arch.n_layers) for name in saes}
    sums = {"clean": 0.0, **{(n, m): 0.0 for n in saes for m in ("sae", "zero")}}
    count = 0
    n_ctx = len(tokens)
    for i in range(0, n_ctx, batch_size):
        ids = torch.from_numpy(np.asarray(tokens[i:i + batch_size], dtype=np.int64))
        s, c = ce_loss(handle, ids)
        sums["clean"] += s
        count += c
        for name, sae in saes.items():
            site: Site = sites[name]
            for mode in ("sae", "zero"):
                sums[(name, mode)] += ce_loss(handle, ids, {(site.layer, site.site): [splice_fn(sae, mode)]})[0]
        if progress is not None:
            progress(min(i + batch_size, n_ctx), n_ctx)
    clean = sums["clean"] / count
    return {n: {"ce_clean": clean, "ce_sae": sums[(n, "sae")] / count, "ce_zero": sums[(n, "zero")] / count,
                "ce_tokens": count} for n in saes}


def quality(act: ActivationFigures, ce: dict[str, float]) -> Quality:
    """Combine the activation and CE figures of one SAE."""
    clean, sae, zero = ce["ce_clean"], ce["ce_sae"], ce["ce_zero"]
    return Quality(
        n_tokens=act.n_tokens, l0=act.l0, dead_frac=act.dead_frac, dense_frac=act.dense_frac, fve=act.fve,
        fve_trimmed=act.fve_trimmed, massive_dims=act.massive_dims, n_massive_positions=act.n_massive_positions,
        ce_tokens=int(ce["ce_tokens"]), ce_clean=clean, ce_sae=sae, ce_zero=zero,
        loss_recovered=(zero - sae) / (zero - clean) if zero != clean else float("nan"), ce_increase=sae - clean)
