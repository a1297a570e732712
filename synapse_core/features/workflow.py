"""Train and evaluate one SAE on a chosen site of the loaded model: what `features train` and
`features eval` (and the app) call. The build of the shipped SAEs (build.py, pipeline.py) does the
same for several sites at once; this is the one-site path for a user's own SAEs.

Trained SAEs go to $SYNAPSE_HOME/features/<site>.sae (a catalog search folder), harvests and
checkpoints to $SYNAPSE_HOME/features-work/, so a stopped run resumes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..common import settings
from ..common.errors import BadInput
from . import catalog, corpus, stats
from .evaluate import Quality, activation_figures, ce_figures, quality
from .harvest import SITE_ORDER, harvest, parse_site
from .pipeline import final_norm_weight, sae_name
from .sae import SAEConfig
from .train import TrainConfig, TrainResult, data_from_store, train

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunConfig:
    """How much text one train or eval run reads."""

    contexts: int = 1000  # packed contexts harvested
    ctx_len: int = 128  # tokens per context, the separator first
    ce_contexts: int = 16  # eval: held-out contexts run clean, spliced and zeroed for the CE figures
    batch_size: int = 8  # contexts per forward pass while harvesting
    seed: int = 0


def check_site(handle, site: str):
    """The Site called `site` on this model; a BadInput naming it when it does not exist."""
    s = parse_site(site, handle.arch.n_layers)
    if s.site not in SITE_ORDER:
        raise BadInput(f"site {site!r} does not exist: sites are {', '.join(SITE_ORDER)}")
    return s


def _work(name: str, split: str, run: RunConfig) -> Path:
    return settings.subdir("features-work") / f"{name}-{split}-{run.contexts}x{run.ctx_len}-s{run.seed}"


def _harvest(handle, site: str, split: str, run: RunConfig, folder: Path, log: Log | None):
    ctxs = corpus.contexts(handle.tokenizer, split, run.ctx_len, run.contexts, seed=run.seed)
    progress = None if log is None else (lambda d, n: log(f"harvest {split}: {d}/{n} contexts"))
    return harvest(handle, [site], ctxs, run.contexts, folder, run.ctx_len, batch_size=run.batch_size,
                   progress=progress)


def train_site(handle, site: str, tcfg: TrainConfig, run: RunConfig = RunConfig(), out: Path | None = None,
               log: Log | None = None) -> tuple[Path, TrainResult]:
    """Harvest `run.contexts` training contexts at `site`, train a Top-K SAE with `tcfg` (resuming
    a checkpoint of the same settings) and save it in SAELens format; returns (folder, result)."""
    s = check_site(handle, site)
    name = sae_name(s.name)
    store = _harvest(handle, s.name, "train", run, _work(name, "train", run), log)
    cfg = SAEConfig(d_in=handle.arch.d_model, d_sae=tcfg.d_sae, k=tcfg.k, hook_name=s.hook_name, hook_layer=s.layer,
                    context_size=run.ctx_len)
    ckpt = settings.subdir("features-work") / f"ckpt-{name}-{tcfg.d_sae}-{tcfg.k}-{tcfg.n_tokens}.pt"
    progress = None if log is None else (
        lambda step, total, m: log(f"train {name}: step {step}/{total} fvu {m['fvu']:.4f}")
        if step % 50 == 0 or step == total else None)
    res = train(cfg, tcfg, data_from_store(store, s.name), checkpoint=ckpt, progress=progress)
    folder = Path(out) if out is not None else settings.subdir("features") / name
    res.sae.save(folder)
    return folder, res


def evaluate_sae(handle, name: str, run: RunConfig = RunConfig(contexts=200), log: Log | None = None,
                 dirs: list[Path] | None = None) -> Quality:
    """Quality of the SAE called `name` on held-out text, and its feature statistics and automatic
    labels written beside it (feature_stats.*), so the browser and `features show` can read them.

    The SAEs shipped inside the package keep the statistics of their build (a full held-out
    harvest): evaluating one measures and returns its quality but writes nothing there."""
    info, sae = catalog.load(name, handle.arch.d_model, dirs)
    if sae.cfg.is_transcoder:
        raise BadInput(f"{name} is a transcoder: `features eval` measures SAEs")
    store = _harvest(handle, parse_site(info.hook_name).name, "heldout", run,
                     _work(info.name, "heldout", run), log)
    site = parse_site(info.hook_name).name
    acts, tokens = store.acts(site), store.tokens()
    ce = ce_figures(handle, {site: sae}, tokens[: run.ce_contexts])[site]
    q = quality(activation_figures(sae, acts), ce)
    arrays = stats.compute(sae, acts, tokens, handle.model.get_output_embeddings().weight,
                           final_norm_weight(handle.model))
    meta = {"name": info.name, "site": site, "model": getattr(handle, "name", ""), "quality": q.to_json(),
            "harvest": {**asdict(run), "exclude_bos": True}, "top_contexts_from": "heldout"}
    if not Path(info.path).resolve().is_relative_to(catalog.SHIPPED_DIR.resolve()):
        stats.save(info.path, arrays, stats.auto_labels(arrays, handle.tokenizer.decode), meta)
    return q
