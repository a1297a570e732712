"""Issue-16 figures on the bundled model, measured in one run: a 200-prompt prompt-set evaluation
(zero-ablating head 0.6) and a 20-prompt sweep over every head (270 zero ablations a prompt), on the
local engine and on Ray with two CPU actors (a local cluster on this machine), with the time per
prompt and the largest difference between the engines' numbers.

How to read the figures for N GPUs. Prompts are independent and the work is split into shards of
whole prompts, so the job time on N actors is about

    T(N) = start + ceil(shards / N) * (shard_size * t_prompt + overhead_per_shard)

`start` (joining the cluster, each actor loading the model once; paid once per pool, not per job)
and `overhead_per_shard` (Ray's task round trip and pickling the results) are measured here;
t_prompt is the per-prompt time on the device the actors get: measure it with this script's
--device on one GPU (`--engines local`). On this machine the two actors share the CPU cores the
local run also has, so the Ray run shows the engine's overhead, not a speed-up; the speed-up on a
cluster is T(1 local) / T(N) from the formula, about N while shard_size * t_prompt is well above
the per-shard overhead.

Usage: python benchmarks/ray_jobs.py [--prompts 200] [--sweep-prompts 20] [--actors 2]
       [--engines local,ray] [--device cpu] [--threads 1]
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAMES = ["Mary", "John", "Tom", "Anna", "Lisa", "Mark", "Paul", "Sarah", "James", "Emma", "David", "Kate"]
TEMPLATES = [
    "When {a} and {b} went to the store, {b} gave a drink to",
    "After {a} and {b} had lunch, {b} handed the bill to",
    "Then {a} and {b} met at the park, and {b} threw a ball to",
]


def prompt_lines(n: int) -> str:
    cases = ((t, a, b) for (a, b) in itertools.permutations(NAMES, 2) for t in TEMPLATES)  # 396 in all
    rows = (f'{t.format(a=a, b=b)} | " {a}" | " {b}"' for t, a, b in cases)
    return "\n".join(itertools.islice(rows, n))


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--sweep-prompts", type=int, default=20)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process and in each actor")
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from synapse_core import Intervention, load_model
    from synapse_core.interventions.promptset import parse_prompt_lines
    from synapse_core.jobs import raypool
    from synapse_core.jobs.config import EngineConfig
    from synapse_core.jobs.shards import default_shard_size, split
    from synapse_core.jobs.tasks import run_prompt_set, run_prompt_sweep

    handle = load_model("bundled", device=args.device, dtype="float32")
    cases = parse_prompt_lines(prompt_lines(args.prompts))
    sweep_cases = cases[:args.sweep_prompts]
    head = [Intervention(0, "attn.head", "zero", 6)]
    engines = args.engines.split(",")
    n_heads = handle.arch.n_layers * handle.arch.n_heads
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch threads {args.threads}; "
          f"{len(cases)} prompts (prompt set), {len(sweep_cases)} prompts x {n_heads} heads (sweep)")
    results = {}
    if "local" in engines:
        results["local"] = _run(run_prompt_set, run_prompt_sweep, handle, cases, sweep_cases, head, None)
    if "ray" in engines:
        os.environ.setdefault(raypool.WORKER_NICENESS_ENV, "0")
        ray_cfg = EngineConfig("ray", ray_actors=args.actors, cpus_per_actor=args.threads)
        try:
            _, start, _ = _timed(lambda: raypool.pool_for(handle, ray_cfg))
            print(f"ray: cluster started and {args.actors} actors loaded the model in {start:.1f} s (once per pool)")
            results["ray"] = _run(run_prompt_set, run_prompt_sweep, handle, cases, sweep_cases, head, ray_cfg)
        finally:
            import ray

            raypool.shutdown_pools()
            ray.shutdown()
    for name, (ps, sw, (t_ps, c_ps), (t_sw, c_sw)) in results.items():
        print(f"{name:>5}: prompt set {t_ps:7.1f} s wall, {c_ps:7.1f} s CPU ({t_ps / len(cases) * 1000:6.1f} ms/prompt "
              f"wall, {c_ps / len(cases) * 1000:6.1f} CPU); sweep {t_sw:7.1f} s wall, {c_sw:7.1f} s CPU "
              f"({t_sw / len(sweep_cases):5.2f} s/prompt wall, {c_sw / len(sweep_cases):5.2f} CPU)")
    if {"local", "ray"} <= set(results):
        (a, sa, (_, t_a), (_, u_a)), (b, sb, (_, t_b), (_, u_b)) = results["local"], results["ray"]
        diff = max(abs(x.change(a.metric) - y.change(b.metric)) for x, y in zip(a.rows, b.rows))
        sdiff = float(np.abs(sa.mean_effects - sb.mean_effects).max())
        shards_ps = len(split(cases, default_shard_size(len(cases), args.actors)))
        shards_sw = len(split(sweep_cases, default_shard_size(len(sweep_cases), args.actors)))
        print(f"largest difference local vs ray: prompt set {diff:.2e}, sweep mean effects {sdiff:.2e}")
        # CPU seconds, not wall: on a shared host two actor processes get a larger share of the CPU
        # than one local process, which reads as a speed-up that a quiet machine would not show
        print(f"ray overhead over local (CPU seconds, driver + actors): prompt set {t_b - t_a:+.1f} s "
              f"({(t_b - t_a) / shards_ps * 1000:+.0f} ms per shard, {shards_ps} shards), "
              f"sweep {u_b - u_a:+.1f} s ({(u_b - u_a) / shards_sw * 1000:+.0f} ms per shard, {shards_sw} shards)")


def _actor_cpu(handle, engine) -> float:
    """CPU seconds the pool's actors have used so far (0 for the local engine)."""
    if engine is None:
        return 0.0
    import ray

    from synapse_core.jobs import raypool

    pool = raypool.pool_for(handle, engine)
    return sum(i["cpu_s"] for i in ray.get([a.ready.remote() for a in pool.actors]))


def _run(run_prompt_set, run_prompt_sweep, handle, cases, sweep_cases, head, engine):
    """Both jobs on one engine: results, wall seconds, and CPU seconds of this process plus the actors."""
    times = []
    out = []
    for job in (lambda: run_prompt_set(handle, cases, head, engine=engine),
                lambda: run_prompt_sweep(handle, sweep_cases, engine=engine)):
        before = _actor_cpu(handle, engine)
        result, wall, cpu = _timed(job)
        out.append(result)
        times.append((wall, cpu + _actor_cpu(handle, engine) - before))
    return out[0], out[1], times[0], times[1]


if __name__ == "__main__":
    main()
