"""Build the SAEs that ship with Synapse for the bundled model, from nothing but the corpus.

    python -m synapse_core.features.build [--work DIR] [--out DIR] [--threads N]

Stages, each skipped when its output is already there (so a stopped build resumes):
harvest the held-out and training contexts at every shipped site (one truncated forward pass
for all three layers), train one Top-K SAE per site, evaluate it on the held-out split, compute
its feature statistics, and write the SAELens-format folder under `shipped/<name>/`.
Progress lines go to stdout with timings; the benchmark reads them from the build log.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import corpus
from .harvest import ActivationStore, harvest

SHIPPED_DIR = Path(__file__).parent / "shipped"


@dataclass(frozen=True)
class BuildPlan:
    """What the shipped SAEs are trained on and how; changing a field changes the shipped files."""

    layers: tuple[int, ...] = (5, 15, 25)  # early, middle, late residual stream
    site: str = "resid.post"
    ctx_len: int = 128  # tokens per packed context, the separator first
    train_contexts: int = 5000  # 640k tokens, 635k without the first position
    heldout_contexts: int = 400  # 51k tokens for quality and feature statistics
    harvest_batch: int = 16
    ce_contexts: int = 48  # held-out contexts (6k tokens) run clean, spliced and zeroed for CE
    # tokens seen by each SAE, by layer (epochs over the harvest as needed); the middle one most
    train_tokens: tuple[tuple[int, int], ...] = ((15, 2_000_000), (5, 1_200_000), (25, 1_200_000))
    d_sae: int = 4608  # 8 x d_model
    k: int = 32
    seed: int = 0

    def site_names(self) -> list[str]:
        """In training order: the layers with the largest budgets first."""
        order = [layer for layer, _ in self.train_tokens] + [x for x in self.layers if x not in dict(self.train_tokens)]
        return [f"layers.{layer}.{self.site}" for layer in order if layer in self.layers]

    def tokens_for(self, layer: int) -> int:
        return dict(self.train_tokens).get(layer, 1_000_000)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _progress(label: str, every: int):
    start = time.time()

    def fn(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            rate = done / max(time.time() - start, 1e-9)
            log(f"{label}: {done}/{total} contexts, {rate:.2f} contexts/s")
    return fn


def harvest_stage(handle, plan: BuildPlan, work: Path) -> dict[str, ActivationStore]:
    stores = {}
    for split, n in (("heldout", plan.heldout_contexts), ("train", plan.train_contexts)):
        folder = work / f"harvest-{split}"
        meta = folder / "meta.json"
        if meta.exists() and json.loads(meta.read_text())["done"] >= n:
            stores[split] = ActivationStore(folder, limit=n)
            continue
        t0 = time.time()
        ctxs = corpus.contexts(handle.tokenizer, split, plan.ctx_len, n, seed=plan.seed)
        stores[split] = harvest(handle, plan.site_names(), ctxs, n, folder, plan.ctx_len,
                                batch_size=plan.harvest_batch, progress=_progress(f"harvest {split}", 160))
        log(f"harvest {split} done: {n * plan.ctx_len} tokens in {time.time() - t0:.0f}s "
            f"({n * plan.ctx_len / (time.time() - t0):.0f} tokens/s)")
    return stores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m synapse_core.features.build", description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path(".synapse-build"), help="harvests, checkpoints, logs")
    ap.add_argument("--out", type=Path, default=SHIPPED_DIR, help="where the SAE folders are written")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--stage", choices=("harvest", "all"), default="all")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..model.loading import load_model

    plan = BuildPlan()
    t0 = time.time()
    log(f"build start: {plan}")
    handle = load_model("bundled", device="cpu", dtype="float32")
    harvest_stage(handle, plan, args.work)
    if args.stage == "harvest":
        return 0
    from .pipeline import train_and_ship

    train_and_ship(handle, plan, args.work, args.out, log)
    log(f"build done in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
