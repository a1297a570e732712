"""Figures for the features engine, measured in one run on this machine (printed, never asserted).

    python benchmarks/features.py [--contexts 16] [--threads 1] [--build-log .synapse-build/build.log]

- harvest throughput (three residual sites, forward stopped after the last) against a plain
  forward pass over the same tokens;
- training tokens per second of the Top-K trainer (d_sae 4608, k 32, batch 1024);
- time to build the shipped SAEs, read from the build log;
- quality of every shipped SAE on the held-out split (from its feature_stats.json);
- time to open one feature's page (stats files only, no model run).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synapse_core.features import catalog, corpus  # noqa: E402
from synapse_core.features.harvest import capture, parse_site  # noqa: E402
from synapse_core.features.sae import SAEConfig  # noqa: E402
from synapse_core.features.train import TrainConfig, TrainData, train  # noqa: E402


def harvest_vs_forward(handle, n_ctx: int, ctx_len: int = 128, batch: int = 8) -> None:
    ctxs = np.stack(list(corpus.contexts(handle.tokenizer, "heldout", ctx_len, n_ctx)))
    ids = torch.from_numpy(ctxs).long()
    sites = [parse_site(f"layers.{layer}.resid.post") for layer in (5, 15, 25)]
    with torch.no_grad():
        handle.model(ids[:2], use_cache=False)  # warm-up
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n_ctx, batch):
            handle.model(ids[i:i + batch], use_cache=False)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, n_ctx, batch):
        capture(handle, ids[i:i + batch], sites)
    harvest = time.perf_counter() - t0
    n = ids.numel()
    print(f"plain forward pass (30 layers + unembedding): {n / plain:8.0f} tokens/s")
    print(f"harvest layers 5, 15, 25 (stops after 26):   {n / harvest:8.0f} tokens/s "
          f"({plain / harvest:.2f}x the plain pass)")


def training_speed(steps: int = 12) -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(40_000, 576)) * rng.uniform(0.5, 3, 576)).astype(np.float16)
    data = TrainData(x, None, np.arange(len(x)))
    cfg = TrainConfig(n_tokens=1024 * steps, scale_tokens=4096, dead_after_tokens=4096)
    res = train(SAEConfig(d_in=576, d_sae=4608, k=32, hook_name="blocks.15.hook_resid_post"), cfg, data)
    print(f"training (d_sae 4608, k 32, batch 1024, AuxK on): {res.tokens_per_s:8.0f} tokens/s")


def build_time(logs: list[Path]) -> None:
    lines = [line for log in logs if log.exists() for line in log.read_text().splitlines()]
    if not lines:
        print(f"build time: no build log at {', '.join(map(str, logs))}")
        return
    stamps, stages = [], []
    for line in lines:
        m = re.match(r"\[(\d\d:\d\d:\d\d)\] (.*)", line)
        if not m:
            continue
        stamps.append(datetime.strptime(m.group(1), "%H:%M:%S"))
        d = re.search(r"^(harvest \w+|train \S+|eval CE|stats \S+) done(?: in (\d+)s|: \d+ tokens in (\d+)s)", m.group(2))
        if d:
            stages.append((d.group(1), int(d.group(2) or d.group(3))))
    for name, sec in stages:
        print(f"  {name:40s} {sec / 60:6.1f} min")
    if stages:
        print(f"build time, stages summed: {sum(s for _, s in stages) / 60:.1f} min (machine shared with other work)")


def quality_and_page() -> None:
    saes = catalog.list_saes([catalog.SHIPPED_DIR])
    if not saes:
        print("no shipped SAEs (run `make features`)")
        return
    keys = ("l0", "dead_frac", "dense_frac", "fve", "fve_trimmed", "ce_clean", "ce_sae", "ce_zero",
            "loss_recovered", "ce_increase")
    print(f"{'SAE':28s} " + " ".join(f"{k:>14s}" for k in keys))
    for s in saes:
        print(f"{s.name:28s} " + " ".join(f"{s.quality.get(k, float('nan')):14.4f}" for k in keys))
    t0 = time.perf_counter()
    feat = catalog.show_feature(f"{saes[len(saes) // 2].name}.123")
    print(f"open one feature's page ({feat.name}, {len(feat.top_contexts)} top contexts): "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build-log", type=Path, nargs="+",
                    default=[Path(".synapse-build/harvest.log"), Path(".synapse-build/build.log")])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from synapse_core.model.loading import load_model

    handle = load_model("bundled", device="cpu", dtype="float32")
    print(f"torch threads: {torch.get_num_threads()}")
    harvest_vs_forward(handle, args.contexts)
    training_speed()
    build_time(args.build_log)
    quality_and_page()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
