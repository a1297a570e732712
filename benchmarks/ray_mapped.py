"""The jobs that reach the engine through a Mapper, local against Ray with two CPU actors, in one run:
a discovery over a prompt set (every stage's per-prompt work), an activation harvest (batches of
contexts, written in order) and a cost report (the text's windows and the prompts' logits, before
and after). For each: wall and CPU seconds (this process plus the actors), the time per case, and the
largest difference between the engines' numbers. See benchmarks/ray_jobs.py for how the figures
scale to N GPUs: the cases of each stage are independent, as a prompt set's prompts are.

Usage: python benchmarks/ray_mapped.py [--prompts 12] [--contexts 64] [--tokens 4000] [--actors 2]
       [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ray_jobs import _actor_cpu, _timed, prompt_lines  # noqa: E402


def _measure(handle, engine, job):
    before = _actor_cpu(handle, engine)
    out, wall, cpu = _timed(job)
    return out, wall, cpu + _actor_cpu(handle, engine) - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=12, help="prompts of the discovery's set")
    parser.add_argument("--contexts", type=int, default=64, help="contexts of 128 tokens harvested at layer 5")
    parser.add_argument("--tokens", type=int, default=4000, help="corpus tokens of the cost report's text")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process and in each actor")
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from synapse_core import load_model
    from synapse_core.analysis.cost import cost_config, cost_report
    from synapse_core.analysis.discovery import discover, discovery_config
    from synapse_core.analysis.perplexity import corpus_docs
    from synapse_core.features import corpus
    from synapse_core.features.harvest import harvest
    from synapse_core.interventions.promptset import parse_prompt_lines
    from synapse_core.jobs import raypool
    from synapse_core.jobs.config import EngineConfig
    from synapse_core.jobs.engine import mapper

    handle = load_model("bundled", dtype="float32")
    cases = parse_prompt_lines(prompt_lines(args.prompts))
    dconfig = discovery_config(handle, cases=cases, top_k_heads=5, max_pair_sweeps=10)
    docs = corpus_docs(handle, tokens=args.tokens)
    cconfig = cost_config(handle, ["0.6", "23.5", "21.3"], text=docs)
    work = Path(tempfile.mkdtemp(prefix="ray-mapped-"))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch threads {args.threads}; "
          f"discovery over {len(cases)} prompts, harvest of {args.contexts} x 128 tokens at layers.5.resid.post, "
          f"cost report over {sum(map(len, docs.documents))} tokens and {len(cconfig.capabilities)} prompts")

    def jobs(name, engine):
        each = mapper(handle, engine)
        contexts = corpus.contexts(handle.tokenizer, "heldout", 128, args.contexts, seed=0)
        return {
            "discovery": _measure(handle, engine, lambda: discover(handle, dconfig, mapper=each)),
            "harvest": _measure(handle, engine, lambda: harvest(handle, ["layers.5.resid.post"], contexts,
                                                                args.contexts, work / name, 128, mapper=each)),
            "cost": _measure(handle, engine, lambda: cost_report(handle, cconfig, docs, mapper=each)),
        }

    results = {"local": jobs("local", None)}
    os.environ.setdefault(raypool.WORKER_NICENESS_ENV, "0")
    ray_cfg = EngineConfig("ray", ray_actors=args.actors, cpus_per_actor=args.threads)
    try:
        _, start, _ = _timed(lambda: raypool.pool_for(handle, ray_cfg))
        print(f"ray: cluster started and {args.actors} actors loaded the model in {start:.1f} s (once per pool)")
        results["ray"] = jobs("ray", ray_cfg)
    finally:
        import ray

        raypool.shutdown_pools()
        ray.shutdown()
    per = {"discovery": (len(cases), "prompt"), "harvest": (args.contexts, "context"), "cost": (None, None)}
    for job in ("discovery", "harvest", "cost"):
        (_, wl, cl), (_, wr, cr) = results["local"][job], results["ray"][job]
        n, unit = per[job]
        each = f" ({wl / n:.2f} / {wr / n:.2f} s per {unit} wall)" if n else ""
        print(f"{job:>9}: local {wl:6.1f} s wall {cl:6.1f} s CPU; ray {wr:6.1f} s wall {cr:6.1f} s CPU; "
              f"wall ratio ray/local {wr / wl:.2f}{each}")
    a, b = results["local"]["discovery"][0], results["ray"]["discovery"][0]
    d_disc = max(abs(x.verified_effect - y.verified_effect) for x, y in zip(a.candidates, b.candidates))
    ha, hb = results["local"]["harvest"][0], results["ray"]["harvest"][0]
    d_h = float(np.abs(ha.acts("layers.5.resid.post").astype(np.float32)
                       - hb.acts("layers.5.resid.post").astype(np.float32)).max())
    ca, cb = results["local"]["cost"][0], results["ray"]["cost"][0]
    d_c = max(abs(ca.text.ce_after - cb.text.ce_after),
              *(abs(x.mean_kl - y.mean_kl) for x, y in zip(ca.groups, cb.groups)))
    print(f"largest difference local vs ray: discovery verified effects {d_disc:.2e} (same circuit: "
          f"{a.circuit.heads == b.circuit.heads}); harvest (float16 as stored) {d_h:.2e}; cost (CE, KL) {d_c:.2e}")


if __name__ == "__main__":
    main()
