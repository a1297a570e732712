"""Train, evaluate, describe and write out SAEs from a finished harvest (the build's later stages).

Each stage leaves its output under the work folder and is skipped when that output exists, so a
stopped build resumes: trained float32 SAEs in `trained/<name>/`, checkpoints in `ckpt-<name>.pt`.
The shipped folder holds the half-precision SAE (SAELens format) and its feature statistics, with
its quality measured on exactly those half-precision weights.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import stats
from .corpus import SOURCES
from .evaluate import activation_figures, ce_figures, quality
from .harvest import ActivationStore, parse_site
from .sae import SAEConfig, TopKSAE, load_sae
from .train import TrainConfig, data_from_store, train

_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")


def final_norm_weight(model) -> torch.Tensor | None:
    """The weight of the norm before the unembedding (None when the family has none we know)."""
    for path in _FINAL_NORMS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None and getattr(obj, "weight", None) is not None:
            return obj.weight
    return None


def sae_name(site: str, site_out: str | None = None) -> str:
    """layers.15.resid.post.sae; a transcoder: layers.5.mlp.in-mlp.out.sae (the written site's layer
    left out when it is the same)."""
    if site_out is None:
        return f"{site}.sae"
    prefix = site.rsplit(".", 2)[0] + "."  # "layers.5."
    return f"{site}-{site_out.removeprefix(prefix)}.sae"


def train_config(plan, layer: int) -> TrainConfig:
    return TrainConfig(d_sae=plan.d_sae, k=plan.k, n_tokens=plan.tokens_for(layer), seed=plan.seed)


def train_stage(handle, plan, work: Path, log) -> dict[str, TopKSAE]:
    store = ActivationStore(work / "harvest-train", limit=plan.train_contexts)
    out = {}
    for site in plan.site_names():
        name, s = sae_name(site), parse_site(site, handle.arch.n_layers)
        tcfg = train_config(plan, s.layer)
        final = work / "trained" / name
        if (final / "cfg.json").exists():
            out[site] = load_sae(final)
            continue
        cfg = SAEConfig(d_in=handle.arch.d_model, d_sae=plan.d_sae, k=plan.k, hook_name=s.hook_name,
                        hook_layer=s.layer, context_size=plan.ctx_len)
        data = data_from_store(store, site)

        def progress(step, total, m, name=name):
            if step % 100 == 0 or step == total:
                log(f"train {name}: step {step}/{total} fvu {m['fvu']:.4f} aux {m['aux']:.3f} "
                    f"dead {m['dead_frac']:.3f} lr {m['lr']:.2e}")

        res = train(cfg, tcfg, data, checkpoint=work / f"ckpt-{name}.pt", progress=progress)
        log(f"train {name} done in {res.seconds:.0f}s: {res.steps_done} steps, {res.tokens_per_s:.0f} tokens/s")
        res.sae.save(final)
        out[site] = res.sae
    return out


def train_and_ship(handle, plan, work: Path, out_dir: Path, log) -> dict[str, Path]:
    """Train every site of the plan, then evaluate, describe and write each shipped folder."""
    trained = train_stage(handle, plan, work, log)
    heldout = ActivationStore(work / "harvest-heldout", limit=plan.heldout_contexts)
    shipped = {site: sae.to_dtype("float16") for site, sae in trained.items()}
    as_eval = {site: sae.to_dtype("float32") for site, sae in shipped.items()}  # measure what ships
    t0 = time.time()
    ce = ce_figures(handle, as_eval, heldout.tokens()[: plan.ce_contexts], progress=lambda d, n: (
        log(f"eval CE: {d}/{n} contexts") if d % 32 == 0 or d == n else None))
    log(f"eval CE done in {time.time() - t0:.0f}s")
    paths = {}
    for site, sae in shipped.items():
        paths[site] = ship(handle, plan, site, sae, heldout, ce[site], out_dir, log)
    return paths


def ship(handle, plan, site: str, sae16: TopKSAE, heldout: ActivationStore, ce: dict, out_dir: Path, log) -> Path:
    """Measure, describe and write one half-precision SAE; ce: its ce_figures entry."""
    t0 = time.time()
    name = sae_name(site)
    sae = sae16.to_dtype("float32")
    q = quality(activation_figures(sae, heldout.acts(site)), ce)
    log(f"quality {name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in q.to_json().items()))
    unembed = handle.model.get_output_embeddings().weight
    arrays = stats.compute(sae, heldout.acts(site), heldout.tokens(), unembed, final_norm_weight(handle.model))
    labels = stats.auto_labels(arrays, handle.tokenizer.decode)
    folder = out_dir / name
    sae16.save(folder)
    meta = {
        "name": name, "site": site, "model": getattr(handle, "name", "bundled"),
        "quality": q.to_json(), "train": asdict(train_config(plan, sae.cfg.hook_layer)),
        "harvest": {"train_contexts": plan.train_contexts, "heldout_contexts": plan.heldout_contexts,
                    "ce_contexts": plan.ce_contexts, "ctx_len": plan.ctx_len, "exclude_bos": True},
        "corpus": [s.package for s in SOURCES], "top_contexts_from": "heldout",
    }
    stats.save(folder, arrays, labels, meta)
    log(f"stats {name} done in {time.time() - t0:.0f}s -> {folder}")
    return folder
