"""Feature sweep on the bundled model, measured in one run: the --top features of a shipped SAE most
active on the prompt, each zeroed (error term kept), batched (sweep_features) vs one ablation run
per feature; the largest difference between the two, and the swept features' largest effects.

Timings alternate between the methods and keep the best of --reps rounds, so a busy machine slows
both alike.

Usage: python benchmarks/feature_sweep.py [--sae layers.15.resid.post.sae] [--top 50] [--reps 2] [--threads N]
                                          [--prompt P --target T --contrast C]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", default="The Eiffel Tower is located in the city of")
    parser.add_argument("--target", default=" Paris")
    parser.add_argument("--contrast", default=" London")
    parser.add_argument("--sae", default="layers.15.resid.post.sae")
    parser.add_argument("--top", type=int, default=50)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from synapse_core import load_model
    from synapse_core.features.intervene import feature_intervention
    from synapse_core.interventions.ablation import ablate
    from synapse_core.interventions.sweep import active_features, sweep_features

    if args.threads:
        torch.set_num_threads(args.threads)
    handle = load_model("bundled", device="cpu", dtype="float32")
    features = active_features(handle, args.prompt, args.sae, args.top)
    print(f"{len(features)} features of {args.sae} active on {args.prompt!r} (top {args.top} asked)")
    best = {"batched": float("inf"), "one by one": float("inf")}
    for _ in range(args.reps):
        t0 = time.perf_counter()
        swept = sweep_features(handle, args.prompt, args.target, args.sae, features, args.contrast)
        best["batched"] = min(best["batched"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        alone = [ablate(handle, args.prompt, args.target, [feature_intervention(f"{args.sae}.{f}")],
                        args.contrast).delta("logit_diff")
                 for f in features]
        best["one by one"] = min(best["one by one"], time.perf_counter() - t0)
    diff = max(abs(float(a) - float(b)) for a, b in zip(swept.effects[0], alone))
    print(f"batched: {best['batched']:.2f} s in {swept.forward_passes} passes; one ablation per feature: "
          f"{best['one by one']:.2f} s; speed-up {best['one by one'] / best['batched']:.1f}x")
    print(f"largest |batched - alone| over the features: {diff:.2e} (logit diff {args.target!r} - {args.contrast!r})")
    top = sorted(zip(features, swept.effects[0]), key=lambda p: -abs(float(p[1])))[:5]
    print("largest effects: " + ", ".join(f"{f} {float(e):+.3f}" for f, e in top))


if __name__ == "__main__":
    main()
