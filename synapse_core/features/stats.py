"""Per-feature statistics for the feature browser, computed once when an SAE is built.

Stored beside the SAELens files as `feature_stats.safetensors` (arrays) and `feature_stats.json`
(quality, labels, provenance). Top contexts are an index into the stored contexts' token ids, so
a feature's page opens without running the model, and anyone can re-run a window through the
model and the SAE to get the same activation.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..common.errors import BadInput, StoreError
from ..common.files import atomic_write_json
from .sae import TopKSAE

STATS_JSON = "feature_stats.json"
STATS_TENSORS = "feature_stats.safetensors"
N_TOP = 10  # top-activating contexts kept per feature
N_TOKENS = 10  # promoted / suppressed tokens kept per feature
N_COOC = 8  # co-occurring features kept per feature
N_BINS = 20  # activation histogram bins, from 0 to the feature's max


@dataclass(frozen=True)
class TopContext:
    token_ids: list[int]  # the whole window the activation was measured in
    token_index: int  # position of the activating token in the window
    activation: float


def compute(sae: TopKSAE, acts: np.ndarray, tokens: np.ndarray, unembed: torch.Tensor,
            norm_weight: torch.Tensor | None, chunk: int = 4096) -> dict[str, np.ndarray]:
    """Arrays for every feature from activations acts (n_ctx, pos, d_in) of contexts tokens
    (n_ctx, pos); position 0 left out. unembed (d_vocab, d_model) and the final norm's weight
    (d_model,) give the tokens each decoder direction promotes and suppresses.
    """
    n_ctx, ctx, d = acts.shape
    F = sae.cfg.d_sae
    flat = np.asarray(acts[:, 1:], dtype=np.float32).reshape(-1, d)
    n = len(flat)
    counts = torch.zeros(F, dtype=torch.long)
    sums = torch.zeros(F, dtype=torch.float64)
    maxes = torch.zeros(F)
    cooc = torch.zeros(F, F)
    vals_all, idx_all = [], []
    with torch.no_grad():
        for i in range(0, n, chunk):
            vals, idx = sae.encode_topk(torch.from_numpy(flat[i:i + chunk]))
            vals_all.append(vals)
            idx_all.append(idx)
            on = vals > 0
            counts += torch.bincount(idx[on], minlength=F)
            sums.index_add_(0, idx[on], vals[on].double())
            maxes.scatter_reduce_(0, idx[on], vals[on], reduce="amax")
            # co-occurrence counts: sparse (F, chunk) 0/1 matrix times its dense transpose
            z = torch.zeros(len(vals), F).scatter_(1, idx, on.float())  # (chunk, F)
            rows = torch.arange(len(vals)).repeat_interleave(idx.shape[1])[on.flatten()]
            zt = torch.sparse_coo_tensor(torch.stack([idx[on], rows]), torch.ones(len(rows)), (F, len(vals)),
                                         check_invariants=False)
            cooc += torch.sparse.mm(zt, z)
    vals_all, idx_all = torch.cat(vals_all), torch.cat(idx_all)
    top_val, top_row = _top_rows(vals_all, idx_all, F)
    # histograms: bins from 0 to each feature's max
    hist = torch.zeros(F, N_BINS, dtype=torch.long)
    on = vals_all > 0
    f_on, v_on = idx_all[on], vals_all[on]
    b = (v_on / maxes[f_on].clamp_min(1e-12) * N_BINS).long().clamp(0, N_BINS - 1)
    hist.view(-1).index_add_(0, f_on * N_BINS + b, torch.ones_like(b))
    # co-occurrence: Jaccard of the token sets, self excluded
    diag = cooc.diagonal().clone()
    jac = cooc / (diag[:, None] + diag[None, :] - cooc).clamp_min(1)
    jac.fill_diagonal_(0)
    co_val, co_idx = jac.topk(N_COOC, dim=1)
    prom_ids, prom_vals, supp_ids, supp_vals = direction_tokens(sae, unembed, norm_weight)
    ctx_of, pos_of = top_row // (ctx - 1), top_row % (ctx - 1) + 1
    ctx_of[top_row < 0], pos_of[top_row < 0] = -1, -1
    top_val[top_row < 0] = 0
    return {
        "density": (counts.double() / n).float().numpy(), "max_act": maxes.numpy(),
        "mean_act": (sums / counts.clamp_min(1)).float().numpy(), "hist": hist.int().numpy(),
        "top_ctx": ctx_of.int().numpy(), "top_pos": pos_of.int().numpy(), "top_act": top_val.numpy(),
        "cooc_idx": co_idx.int().numpy(), "cooc_jaccard": co_val.numpy(),
        "promoted_ids": prom_ids, "promoted_logits": prom_vals, "suppressed_ids": supp_ids,
        "suppressed_logits": supp_vals, "contexts": np.asarray(tokens, dtype=np.int32), "n_tokens": np.array([n]),
    }


def _top_rows(vals: torch.Tensor, idx: torch.Tensor, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each latent its N_TOP largest activations and their rows, from top-k vals / idx (n, k):
    (n_latents, N_TOP) each, rows -1 where a latent fired fewer times."""
    v, f = vals.flatten().numpy(), idx.flatten().numpy()
    row = np.repeat(np.arange(len(vals)), idx.shape[1])
    keep = v > 0
    v, f, row = v[keep], f[keep], row[keep]
    order = np.lexsort((row, -v, f))  # by latent, then activation (highest first), then row
    f, v, row = f[order], v[order], row[order]
    start = np.searchsorted(f, np.arange(n_latents))
    rank = np.arange(len(f)) - start[f]
    sel = rank < N_TOP
    top_val = np.zeros((n_latents, N_TOP), dtype=np.float32)
    top_row = np.full((n_latents, N_TOP), -1, dtype=np.int64)
    top_val[f[sel], rank[sel]] = v[sel]
    top_row[f[sel], rank[sel]] = row[sel]
    return torch.from_numpy(top_val), torch.from_numpy(top_row)


def direction_tokens(sae: TopKSAE, unembed: torch.Tensor, norm_weight: torch.Tensor | None, chunk: int = 512):
    """Tokens each decoder row promotes and suppresses: W_dec (d_sae, d_model) * norm weight, then
    through the unembedding (d_vocab, d_model). Returns ids and logits, each (d_sae, N_TOKENS)."""
    W = sae.W_dec.detach().float()
    if norm_weight is not None:
        W = W * norm_weight.float()
    U = unembed.detach().float()
    out = [[], [], [], []]
    with torch.no_grad():
        for i in range(0, len(W), chunk):
            logits = W[i:i + chunk] @ U.T  # (chunk, d_vocab)
            hi, lo = logits.topk(N_TOKENS, dim=1), logits.topk(N_TOKENS, dim=1, largest=False)
            for lst, t in zip(out, (hi.indices, hi.values, lo.indices, lo.values)):
                lst.append(t)
    ids_p, v_p, ids_s, v_s = (torch.cat(x).numpy() for x in out)
    return ids_p.astype(np.int32), v_p, ids_s.astype(np.int32), v_s


def auto_labels(arrays: dict[str, np.ndarray], decode) -> list[str]:
    """A short label per feature from the tokens it fires on (in its top contexts) and the tokens
    its decoder direction promotes: 'fires on " the", " a" -> " United"'. decode(ids) -> str."""
    labels = []
    for f in range(len(arrays["density"])):
        if arrays["density"][f] == 0:
            labels.append("dead (never active on held-out text)")
            continue
        fired = Counter()
        for c, p, a in zip(arrays["top_ctx"][f], arrays["top_pos"][f], arrays["top_act"][f]):
            if c >= 0:
                fired[decode([int(arrays["contexts"][c, p])])] += float(a)
        on = ", ".join(repr(t) for t, _ in fired.most_common(3))
        prom = ", ".join(repr(decode([int(t)])) for t in arrays["promoted_ids"][f][:3])
        labels.append(f"fires on {on} -> {prom}")
    return labels


def save(folder: Path, arrays: dict[str, np.ndarray], labels: list[str], meta: dict) -> None:
    from safetensors.numpy import save_file

    folder = Path(folder)
    tmp = folder / (STATS_TENSORS + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    tmp.replace(folder / STATS_TENSORS)
    atomic_write_json(folder / STATS_JSON, {**meta, "labels": labels})


class FeatureStats:
    """The stored statistics of one SAE folder, read lazily."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / STATS_JSON).read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.folder} has no readable {STATS_JSON}: {exc}") from exc
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            from safetensors.numpy import load_file

            try:
                self._arrays = load_file(str(self.folder / STATS_TENSORS))
            except Exception as exc:  # safetensors raises several types for a bad file
                raise StoreError(f"{self.folder / STATS_TENSORS} is missing or corrupt: {exc}") from exc
        return self._arrays

    @property
    def d_sae(self) -> int:
        return len(self.meta["labels"])

    def check(self, index: int) -> int:
        if not 0 <= int(index) < self.d_sae:
            raise BadInput(f"feature {index} does not exist: {self.folder.name} has features 0-{self.d_sae - 1}")
        return int(index)

    def label(self, index: int) -> str:
        return self.meta["labels"][self.check(index)]

    def top_contexts(self, index: int) -> list[TopContext]:
        """Highest first; token_ids is the stored context window up to its end."""
        a, f = self.arrays, self.check(index)
        out = []
        for c, p, v in zip(a["top_ctx"][f], a["top_pos"][f], a["top_act"][f]):
            if c >= 0:
                out.append(TopContext([int(t) for t in a["contexts"][c]], int(p), float(v)))
        return out
