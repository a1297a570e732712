"""Training Top-K SAEs and transcoders (Gao et al. 2024) on harvested activations.

One loop serves both: an SAE reconstructs the site it reads, a transcoder reads one site and
reconstructs another. Inputs and targets are scaled by fixed factors so their mean squared norm is
d (as SAELens's "expected_average_only_in"); the factors are folded into the saved weights.
Loss: normalised MSE plus AuxK (the top `aux_k` dead latents reconstruct the residual error), Adam
with linear warm-up and a linear decay to zero, decoder rows kept at unit norm (their gradient's
parallel component removed before each step). The batch order is a function of (seed, epoch),
and a checkpoint holds every other piece of state, so a resumed run ends with exactly the weights
of an uninterrupted one (on CPU).
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..common.errors import BadInput
from .sae import SAEConfig, TopKSAE

ProgressFn = Callable[[int, int, dict], None]  # (step, total steps, metrics of this step)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; defaults are the ones the shipped SAEs use."""

    d_sae: int = 4608
    k: int = 32
    lr: float = 8e-4
    batch_size: int = 1024  # tokens per step
    n_tokens: int = 2_000_000  # tokens seen in all (epochs over the data as needed)
    warmup_frac: float = 0.03  # linear warm-up over this share of steps
    decay_frac: float = 0.3  # linear decay to zero over the last share of steps
    aux_k: int = 256  # dead latents used by AuxK (Gao: d_model / 2)
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 100_000  # a latent not fired for this many tokens counts as dead
    scale_tokens: int = 20_000  # tokens used to estimate the input / output scale
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 6.25e-10
    seed: int = 0
    checkpoint_every: int = 250  # steps

    @property
    def steps(self) -> int:
        return max(1, self.n_tokens // self.batch_size)

    def lr_at(self, step: int) -> float:
        n = self.steps
        warm = max(1, int(n * self.warmup_frac))
        decay_start = int(n * (1 - self.decay_frac))
        if step < warm:
            return self.lr * (step + 1) / warm
        if step >= decay_start:
            return self.lr * max(0.0, (n - step) / max(1, n - decay_start))
        return self.lr


@dataclass
class TrainData:
    """Rows to learn from: x (n, d_in) and y (n, d_out) (y None: an SAE, y = x); memmaps are fine."""

    x: np.ndarray
    y: np.ndarray | None
    rows: np.ndarray  # int64 indices into x / y of the usable rows (e.g. without the first position)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.sort(idx)  # reads in file order; the loss is a mean, so order within a batch is moot
        x = torch.from_numpy(np.asarray(self.x[idx], dtype=np.float32))
        y = x if self.y is None else torch.from_numpy(np.asarray(self.y[idx], dtype=np.float32))
        return x, y


def data_from_store(store, site_in: str, site_out: str | None = None, exclude_bos: bool = True) -> TrainData:
    """TrainData over a harvest: contexts flattened to rows; position 0 (the separator, a
    massive-activation outlier in this model) left out unless exclude_bos is False."""
    xs = store.acts(site_in)
    n_ctx, ctx, d = xs.shape
    x = xs.reshape(n_ctx * ctx, d)
    y = None if site_out is None else store.acts(site_out).reshape(n_ctx * ctx, -1)
    rows = np.arange(n_ctx * ctx, dtype=np.int64)
    if exclude_bos:
        rows = rows[rows % ctx != 0]
    return TrainData(x, y, rows)


@dataclass(frozen=True)
class TrainResult:
    sae: TopKSAE  # float32, scaling folded in
    steps_done: int
    stopped: bool  # True when should_stop ended the run early (a checkpoint was written)
    seconds: float
    tokens_per_s: float
    last_metrics: dict


def _order(cfg: TrainConfig, data: TrainData, epoch: int) -> np.ndarray:
    return np.random.default_rng([cfg.seed, epoch]).permutation(data.rows)


def _batch_rows(cfg: TrainConfig, data: TrainData, step: int, cache: dict) -> np.ndarray:
    per_epoch = len(data.rows) // cfg.batch_size
    if per_epoch < 1:
        raise BadInput(f"{len(data.rows)} rows cannot fill one batch of {cfg.batch_size}")
    epoch, i = divmod(step, per_epoch)
    if cache.get("epoch") != epoch:
        cache.update(epoch=epoch, order=_order(cfg, data, epoch))
    return cache["order"][i * cfg.batch_size:(i + 1) * cfg.batch_size]


def _scale(arr: np.ndarray, rows: np.ndarray, n: int, seed: int) -> float:
    """sqrt(d / mean ||v||^2) over a seeded sample of rows."""
    pick = np.sort(np.random.default_rng([seed, 7]).choice(rows, size=min(n, len(rows)), replace=False))
    v = np.asarray(arr[pick], dtype=np.float64)
    return float(math.sqrt(v.shape[1] / np.mean(np.sum(v * v, axis=1))))


def init_sae(sae_cfg: SAEConfig, cfg: TrainConfig, data: TrainData, s_in: float, s_out: float) -> TopKSAE:
    """Decoder rows random unit vectors, encoder their transpose (SAE) or random, b_dec the mean target."""
    gen = torch.Generator().manual_seed(cfg.seed)
    sae = TopKSAE(sae_cfg)
    with torch.no_grad():
        w = torch.randn(sae_cfg.d_sae, sae_cfg.out_dim, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        if sae_cfg.is_transcoder:
            e = torch.randn(sae_cfg.d_in, sae_cfg.d_sae, generator=gen)
            sae.W_enc.copy_(e / e.norm(dim=0, keepdim=True))
        else:
            sae.W_enc.copy_(sae.W_dec.T)
        pick = np.sort(np.random.default_rng([cfg.seed, 8]).choice(data.rows, min(cfg.scale_tokens, len(data.rows)), replace=False))
        _, y = data.batch(pick)
        sae.b_dec.copy_(y.mean(0) * s_out)
    return sae


def _coo_t(idx: torch.Tensor, vals: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Sparse (d_sae, batch) matrix with vals (batch, n) at rows idx (batch, n)."""
    batch, n = idx.shape
    cols = torch.arange(batch).repeat_interleave(n)
    return torch.sparse_coo_tensor(torch.stack([idx.flatten(), cols]), vals.flatten(), (n_latents, batch), check_invariants=False).coalesce()


def _rowdot(g: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """g[b] . w[idx[b, j]] for g (batch, d), w (d_sae, d), idx (batch, n) sorted per row: (batch, n)."""
    batch, n = idx.shape
    crow = torch.arange(0, batch * n + 1, n)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": sampled_addmm is what we need
        warnings.simplefilter("ignore", UserWarning)
        mask = torch.sparse_csr_tensor(crow, idx.flatten(), torch.zeros(batch * n, dtype=g.dtype),
                                       (batch, w.shape[0]), check_invariants=False)
    return torch.sparse.sampled_addmm(mask, g, w.T).values().view(batch, n)


def _topk_sorted(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    idx, order = idx.sort(dim=-1)
    return vals.gather(-1, order), idx


def _step(sae: TopKSAE, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, since_fired: torch.Tensor):
    """One batch: x (batch, d_in), y (batch, d_out), both scaled. Sets every parameter's .grad by
    hand, which costs one dense product (the pre-activations) and sparse work for the rest, where
    autograd would spend three dense products. Updates since_fired; returns the metrics."""
    batch, n_lat = x.shape[0], sae.cfg.d_sae
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    with torch.no_grad():
        xc = x - b_dec if sae.cfg.apply_b_dec_to_input else x
        pre = torch.relu(xc @ W_enc + b_enc)  # (batch, d_sae)
        vals, idx = _topk_sorted(pre, cfg.k)  # (batch, k)
        y_hat = torch.nn.functional.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum") + b_dec
        err = y - y_hat  # (batch, d_out)
        total_var = (y - y.mean(0)).pow(2).sum(-1).mean()
        mse = err.pow(2).sum(-1).mean() / total_var
        g = -2 * err / (batch * total_var)  # d mse / d y_hat
        g_W_dec = torch.sparse.mm(_coo_t(idx, vals, n_lat), g)
        g_b_dec = g.sum(0)
        enc = [(idx, _rowdot(g, W_dec, idx) * (vals > 0))]
        fired = torch.zeros(n_lat, dtype=torch.bool)
        fired[idx[vals > 0]] = True
        since_fired += batch
        since_fired[fired] = 0
        dead = since_fired > cfg.dead_after_tokens
        n_dead = int(dead.sum())
        aux = torch.zeros(())
        if n_dead > 0 and cfg.aux_coef > 0:
            a_vals, a_idx = _topk_sorted(pre.masked_fill(~dead, 0.0), min(cfg.aux_k, n_dead))
            e_hat = torch.nn.functional.embedding_bag(a_idx, W_dec, per_sample_weights=a_vals, mode="sum")
            e_norm = err.pow(2).sum(-1).mean().clamp_min(1e-12)  # err is a fixed target here
            resid = err - e_hat
            aux = resid.pow(2).sum(-1).mean() / e_norm
            ga = -2 * cfg.aux_coef * resid / (batch * e_norm)
            g_W_dec += torch.sparse.mm(_coo_t(a_idx, a_vals, n_lat), ga)
            enc.append((a_idx, _rowdot(ga, W_dec, a_idx) * (a_vals > 0)))
        all_idx = torch.cat([i for i, _ in enc], 1)
        all_g = torch.cat([v for _, v in enc], 1)
        W_enc.grad = torch.sparse.mm(_coo_t(all_idx, all_g, n_lat), xc).T.contiguous()
        b_enc.grad = torch.zeros(n_lat).index_add_(0, all_idx.flatten(), all_g.flatten())
        if sae.cfg.apply_b_dec_to_input:
            g_b_dec = g_b_dec - W_enc @ b_enc.grad
        W_dec.grad, b_dec.grad = g_W_dec, g_b_dec
    fvu = err.pow(2).sum(-1).mean() / total_var
    return mse + cfg.aux_coef * aux, {"mse": float(mse), "aux": float(aux), "fvu": float(fvu),
                                      "dead_frac": n_dead / n_lat}


def train(sae_cfg: SAEConfig, cfg: TrainConfig, data: TrainData, checkpoint: Path | None = None,
          progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
          stop_at_step: int | None = None) -> TrainResult:
    """Train (or resume from `checkpoint`) and return the SAE with its scaling folded in.

    `should_stop()` is asked before every step; when it says yes (or at `stop_at_step`) a checkpoint
    is written and the result has stopped=True; calling train() again with the same arguments resumes.
    """
    if sae_cfg.d_sae != cfg.d_sae or sae_cfg.k != cfg.k:
        raise BadInput(f"SAEConfig (d_sae {sae_cfg.d_sae}, k {sae_cfg.k}) and TrainConfig (d_sae {cfg.d_sae}, "
                       f"k {cfg.k}) disagree")
    if data.x.shape[1] != sae_cfg.d_in:
        raise BadInput(f"the training inputs have width {data.x.shape[1]}, the SAE reads d_in = {sae_cfg.d_in}")
    sae_cfg = replace(sae_cfg, dtype="float32")
    state = torch.load(checkpoint, weights_only=False) if checkpoint is not None and Path(checkpoint).exists() else None
    if state is not None and state["train_cfg"] != asdict(cfg):
        raise BadInput(f"the checkpoint {checkpoint} was made with other settings; delete it to start over")
    if state is None:
        s_in = _scale(data.x, data.rows, cfg.scale_tokens, cfg.seed)
        s_out = s_in if data.y is None else _scale(data.y, data.rows, cfg.scale_tokens, cfg.seed)
        sae = init_sae(sae_cfg, cfg, data, s_in, s_out)
    else:
        s_in, s_out = state["s_in"], state["s_out"]
        sae = TopKSAE(sae_cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
    since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long)
    step = 0
    if state is not None:
        sae.load_state_dict(state["sae"])
        opt.load_state_dict(state["opt"])
        since_fired = state["since_fired"]
        step = state["step"]

    def save() -> None:
        if checkpoint is None:
            return
        tmp = Path(str(checkpoint) + ".tmp")
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"sae": sae.state_dict(), "opt": opt.state_dict(), "since_fired": since_fired, "step": step,
                    "s_in": s_in, "s_out": s_out, "train_cfg": asdict(cfg)}, tmp)
        tmp.replace(checkpoint)

    cache: dict = {}
    t0, start_step, metrics, stopped = time.time(), step, {}, False
    while step < cfg.steps:
        if (should_stop is not None and should_stop()) or (stop_at_step is not None and step >= stop_at_step):
            stopped = True
            break
        x, y = data.batch(_batch_rows(cfg, data, step, cache))
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        opt.zero_grad(set_to_none=True)
        _, metrics = _step(sae, cfg, x * s_in, y * s_out, since_fired)
        with torch.no_grad():
            w, g = sae.W_dec, sae.W_dec.grad
            g -= (g * w).sum(-1, keepdim=True) * w  # keep rows on the unit sphere
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        step += 1
        metrics["lr"] = cfg.lr_at(step - 1)
        if progress is not None:
            progress(step, cfg.steps, metrics)
        if step % cfg.checkpoint_every == 0:
            save()
    save()
    seconds = time.time() - t0
    return TrainResult(fold_scaling(sae, s_in, s_out), step, stopped, seconds,
                       (step - start_step) * cfg.batch_size / max(seconds, 1e-9), metrics)


def fold_scaling(sae: TopKSAE, s_in: float, s_out: float) -> TopKSAE:
    """The SAE on raw activations: trained on (s_in x) -> (s_out y), returned for x -> y.

    z = topk(relu((s_in x - b) W + c)) = topk(relu((x - b/s_in)(s_in W) + c)) (b only with
    apply_b_dec_to_input, where s_in = s_out); y_hat = (z W_dec + b_dec) / s_out.
    """
    if sae.cfg.apply_b_dec_to_input and not math.isclose(s_in, s_out):
        raise BadInput("an SAE that subtracts b_dec from its input needs one scale for input and output")
    out = TopKSAE(sae.cfg)
    with torch.no_grad():
        out.W_enc.copy_(sae.W_enc * s_in)
        out.b_enc.copy_(sae.b_enc)
        out.W_dec.copy_(sae.W_dec / s_out)
        out.b_dec.copy_(sae.b_dec / s_out)
    return out.eval()
