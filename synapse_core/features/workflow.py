"""Train and evaluate one SAE on a chosen site of the loaded model: what `features train` and
`features eval` (and the app) call. The build of the shipped SAEs (build.py, pipeline.py) does the
same for several sites at once; this is the one-site path for a user's own SAEs.

Trained SAEs go to $SYNAPSE_HOME/features/<site>.sae (a catalog search folder), harvests and
checkpoints to $SYNAPSE_HOME/features-work/, so a stopped run resumes. A transcoder (read one site,
reconstruct another, e.g. layers.5.mlp.in -> layers.5.mlp.out) is trained the same way, both sites
harvested from the same forward passes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..common import settings
from ..common.errors import BadInput
from ..model.mapper import Mapper
from . import catalog, corpus, stats
from .evaluate import Quality, activation_figures, ce_figures, quality
from .harvest import SITE_ORDER, Site, harvest, parse_site
from .pipeline import final_norm_weight, sae_name
from .sae import SAEConfig
from .train import TrainConfig, TrainResult, data_from_store, train

Log = Callable[[str], None]
StageProgress = Callable[[str, int, int], None]  # (stage: "harvest" | "train", done, total)
Stop = Callable[[], bool]


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


def _harvest(handle, sites: list[str], split: str, run: RunConfig, folder: Path, log: Log | None,
             progress: StageProgress | None = None, should_stop: Stop | None = None, mapper: Mapper | None = None):
    ctxs = corpus.contexts(handle.tokenizer, split, run.ctx_len, run.contexts, seed=run.seed)

    def report(d, n):
        if log is not None:
            log(f"harvest {split}: {d}/{n} contexts")
        if progress is not None:
            progress("harvest", d, n)

    return harvest(handle, sites, ctxs, run.contexts, folder, run.ctx_len, batch_size=run.batch_size,
                   progress=report, should_stop=should_stop, mapper=mapper)


def site_pair(handle, site: str, site_out: str | None = None) -> tuple[Site, Site | None]:
    """The sites an SAE (site_out None) or a transcoder reads and writes, checked against the model.
    A transcoder reads one site and reconstructs another at the same layer or later, e.g.
    layers.5.mlp.in -> layers.5.mlp.out (the MLP it stands in for)."""
    s_in = check_site(handle, site)
    if site_out is None or site_out == site:
        return s_in, None
    s_out = check_site(handle, site_out)
    if s_out.order < s_in.order:
        raise BadInput(f"a transcoder reads {s_in.name} and writes {s_out.name}, which comes before it: "
                       "the site written must come at or after the site read")
    return s_in, s_out


def train_site(handle, site: str, tcfg: TrainConfig, run: RunConfig = RunConfig(), out: Path | None = None,
               log: Log | None = None, site_out: str | None = None, progress: StageProgress | None = None,
               should_stop: Stop | None = None, mapper: Mapper | None = None) -> tuple[Path | None, TrainResult | None]:
    """Harvest `run.contexts` training contexts at `site` (and `site_out` for a transcoder), train a
    Top-K SAE or transcoder with `tcfg` and save it in SAELens format; returns (folder, result).

    progress(stage, done, total) reports the harvest ("harvest", contexts) and the training ("train",
    steps). When should_stop() says yes the run stops, the harvest and a training checkpoint stay in
    the work folder, and (None, result or None) comes back; calling again with the same settings
    resumes where it stopped. mapper: where the harvest's forward passes run (model.mapper; the job
    engine's runs them on Ray actors, with the same activations).
    """
    s_in, s_out = site_pair(handle, site, site_out)
    name = sae_name(s_in.name, None if s_out is None else s_out.name)
    sites = [s_in.name] + ([] if s_out is None else [s_out.name])
    store = _harvest(handle, sites, "train", run, _work(name, "train", run), log, progress, should_stop, mapper)
    if store.n_done < run.contexts:
        return None, None
    d = handle.arch.d_model
    cfg = SAEConfig(d_in=d, d_sae=tcfg.d_sae, k=tcfg.k, hook_name=s_in.hook_name, hook_layer=s_in.layer,
                    context_size=run.ctx_len)
    if s_out is not None:
        cfg = replace(cfg, d_out=d, hook_name_out=s_out.hook_name, apply_b_dec_to_input=False)
    ckpt = (settings.subdir("features-work")
            / f"ckpt-{name}-{tcfg.d_sae}-{tcfg.k}-{tcfg.n_tokens}-{run.contexts}x{run.ctx_len}-s{run.seed}.pt")

    def report(step, total, m):
        if log is not None and (step % 50 == 0 or step == total):
            log(f"train {name}: step {step}/{total} fvu {m['fvu']:.4f}")
        if progress is not None:
            progress("train", step, total)

    data = data_from_store(store, s_in.name, None if s_out is None else s_out.name)
    res = train(cfg, tcfg, data, checkpoint=ckpt, progress=report, should_stop=should_stop)
    if res.stopped:
        return None, res
    folder = Path(out) if out is not None else settings.subdir("features") / name
    res.sae.save(folder)
    return folder, res


def evaluate_sae(handle, name: str, run: RunConfig = RunConfig(contexts=200), log: Log | None = None,
                 dirs: list[Path] | None = None, mapper: Mapper | None = None) -> Quality:
    """Quality of the SAE called `name` on held-out text, and its feature statistics and automatic
    labels written beside it (feature_stats.*), so the browser and `features show` can read them.

    The SAEs shipped inside the package keep the statistics of their build (a full held-out
    harvest): evaluating one measures and returns its quality but writes nothing there."""
    info, sae = catalog.load(name, handle.arch.d_model, dirs)
    if sae.cfg.is_transcoder:
        raise BadInput(f"{name} is a transcoder: `features eval` measures SAEs")
    store = _harvest(handle, [parse_site(info.hook_name).name], "heldout", run,
                     _work(info.name, "heldout", run), log, mapper=mapper)
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
