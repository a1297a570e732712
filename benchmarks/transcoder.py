"""A transcoder of one MLP of the bundled model (mlp.in -> mlp.out), trained here and measured in one
run (printed, never asserted):

- harvest and training time (`features train --site-out` does the same), training tokens per second;
- on held-out text: L0, dead latents, FVE of the MLP output, and the next-token CE with the
  transcoder's output spliced in place of the MLP's against the clean model and against a zeroed
  MLP (loss recovered);
- an attribution graph with the transcoder in place of that layer's MLP: feature and error nodes,
  completeness error, time.

    python benchmarks/transcoder.py [--layer 5] [--contexts 200] [--tokens 400000] [--d-sae 4608] [--k 32]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layer", type=int, default=5)
    p.add_argument("--contexts", type=int, default=200, help="training contexts of 128 tokens harvested")
    p.add_argument("--tokens", type=int, default=400_000, help="training tokens")
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--heldout", type=int, default=32, help="held-out contexts measured")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("SYNAPSE_HOME", tempfile.mkdtemp(prefix="synapse-transcoder-"))

    from synapse_core import load_model
    from synapse_core.features import corpus, workflow
    from synapse_core.features.evaluate import activation_figures, ce_loss
    from synapse_core.features.harvest import harvest
    from synapse_core.features.train import TrainConfig
    from synapse_core.graphs.build import build_graph

    if args.threads:
        torch.set_num_threads(args.threads)
    handle = load_model("bundled", device="cpu", dtype="float32")
    site_in, site_out = f"layers.{args.layer}.mlp.in", f"layers.{args.layer}.mlp.out"
    tcfg = TrainConfig(d_sae=args.d_sae, k=args.k, n_tokens=args.tokens)
    t0 = time.perf_counter()
    folder, res = workflow.train_site(handle, site_in, tcfg, workflow.RunConfig(contexts=args.contexts),
                                      site_out=site_out)
    total = time.perf_counter() - t0
    print(f"{folder.name}: harvest + training {total:.0f} s (training {res.seconds:.0f} s, "
          f"{res.tokens_per_s:,.0f} tokens/s, {res.steps_done} steps)")
    tc = res.sae

    ctxs = list(corpus.contexts(handle.tokenizer, "heldout", 128, args.heldout))
    store = harvest(handle, [site_in, site_out], ctxs, len(ctxs), Path(os.environ["SYNAPSE_HOME"]) / "heldout", 128)
    fig = activation_figures(tc, store.acts(site_in), targets=store.acts(site_out))
    print(f"held-out ({fig.n_tokens:,} tokens): L0 {fig.l0:.1f}, dead {fig.dead_frac:.1%}, FVE of the MLP output "
          f"{fig.fve:.3f} ({fig.fve_trimmed:.3f} without the massive dimensions)")

    seen: dict = {}

    def read(x):
        seen["x"] = x

    def splice(y):  # the transcoder's output in place of the MLP's, position 0 (the separator) kept
        out = y.clone()
        out[:, 1:] = tc(seen["x"][:, 1:].float()).to(y.dtype)
        return out

    def zero(y):
        out = y.clone()
        out[:, 1:] = 0
        return out

    ids = torch.from_numpy(np.stack(ctxs[:8])).long()
    ce = {}
    for name, fns in (("clean", {}), ("transcoder", {(args.layer, "mlp.in"): [read], (args.layer, "mlp.out"): [splice]}),
                      ("zero", {(args.layer, "mlp.out"): [zero]})):
        loss, n = ce_loss(handle, ids, fns)
        ce[name] = loss / n
    recovered = (ce["zero"] - ce["transcoder"]) / (ce["zero"] - ce["clean"])
    print(f"CE clean {ce['clean']:.3f}, transcoder {ce['transcoder']:.3f}, MLP zeroed {ce['zero']:.3f} nats: "
          f"loss recovered {recovered:.3f}")

    t0 = time.perf_counter()
    g = build_graph(handle, "The capital of Australia is the city of", " Sydney", " Canberra", claims=5,
                    transcoders={args.layer: tc})
    kinds = [n.kind for n in g.nodes]
    print(f"graph with the transcoder at layer {args.layer}: {time.perf_counter() - t0:.1f} s, {g.n_nodes} nodes "
          f"({kinds.count('feature')} feature and {kinds.count('error')} error nodes kept), completeness error "
          f"{g.completeness_error:.1e}, replacement score {g.replacement_score:.3f}")


if __name__ == "__main__":
    main()
