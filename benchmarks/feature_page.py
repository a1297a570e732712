"""Time to open one feature's page: what the Features page reads for one feature, from the stored
index (no corpus re-run), and the feature table of an SAE; optionally the shading re-run of the
top contexts through the bundled model (--model).

    .venv/bin/python benchmarks/feature_page.py [--sae layers.15.resid.post.sae] [--model]
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", default="layers.15.resid.post.sae")
    ap.add_argument("--model", action="store_true", help="also time the re-run that shades the top contexts")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from synapse_core.features import browse, catalog

    t0 = time.perf_counter()
    dens = catalog.densities(args.sae)
    t1 = time.perf_counter()
    rows = browse.find(args.sae, sort="density")
    t2 = time.perf_counter()
    f = catalog.show_feature(f"{args.sae}.{rows[len(rows) // 2].feature}")
    t3 = time.perf_counter()
    print(f"{args.sae}: {len(dens)} features, {len(rows)} listed")
    print(f"read densities (cold): {(t1 - t0) * 1e3:.0f} ms")
    print(f"feature table (live features by density): {(t2 - t1) * 1e3:.0f} ms")
    print(f"open one feature ({f.name}: {len(f.top_contexts)} top contexts, histogram, tokens, "
          f"co-occurring): {(t3 - t2) * 1e3:.0f} ms")
    if args.model:
        from synapse_core.features.harvest import capture, parse_site
        from synapse_core.model.loading import load_model

        handle = load_model("bundled", device="cpu", dtype="float32")
        info, sae = catalog.load(args.sae, handle.arch.d_model)
        site = parse_site(info.hook_name)
        t4 = time.perf_counter()
        x = capture(handle, torch.tensor([c.token_ids for c in f.top_contexts]), [site])[site]
        with torch.no_grad():
            sae.encode(x)[..., f.feature]
        print(f"shade the top contexts (one truncated forward pass): {(time.perf_counter() - t4) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
