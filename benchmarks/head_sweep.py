"""Issue-3 figure on the bundled model, measured in one run: the exact head sweep (270 zero
ablations of SmolLM2-135M-Instruct) batched vs one forward pass per head.

Goal: batched at least 3x faster, the same numbers to 1e-4. Also shown: plain batching without
reusing the clean layers below each chunk, to separate the two gains. Timings alternate between
the methods and keep the best of --reps rounds, so a busy machine slows all of them alike; the
process's CPU time is shown beside the wall time, as a busy machine inflates it less.

Usage: python benchmarks/head_sweep.py [--rows 54] [--reps 3] [--threads N] [--prompt P]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "The Eiffel Tower is located in the city of"
TARGET, CONTRAST = " Paris", " London"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--rows", default="54", help="rows per forward pass; a comma list compares several")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    import torch

    from synapse_core import Intervention, load_model
    from synapse_core.interventions.metrics import resolve_target
    from synapse_core.interventions.ops import forward_last, prepare
    from synapse_core.interventions.sweep import batched_scores, one_by_one_scores
    from synapse_core.model.tokens import encode_prompt

    if args.threads:
        torch.set_num_threads(args.threads)
    handle = load_model("bundled", device=args.device, dtype=args.dtype)
    arch = handle.arch
    ids, _ = encode_prompt(handle, args.prompt)
    target = resolve_target(handle, TARGET, CONTRAST)
    ivs = [Intervention(layer, "attn.head", "zero", head) for layer in range(arch.n_layers) for head in range(arch.n_heads)]
    prepared = prepare(handle, ids, ivs)
    clean = forward_last(handle, ids, {})[0]
    rows_options = [int(r) for r in args.rows.split(",")]

    methods = {"one_by_one": lambda: (one_by_one_scores(handle, ids, prepared, target, clean), len(ivs))}
    for rows in rows_options:
        methods[f"batched_{rows}"] = lambda rows=rows: batched_scores(handle, ids, prepared, target, batch_rows=rows)
    methods[f"plain_batched_{rows_options[0]}"] = lambda: batched_scores(
        handle, ids, prepared, target, batch_rows=rows_options[0], reuse_prefix=False)

    forward_last(handle, ids.expand(rows_options[0], -1), {})  # warm-up
    best = {name: float("inf") for name in methods}
    cpu = {name: float("inf") for name in methods}
    scores, passes = {}, {}
    for _ in range(args.reps):
        for name, run in methods.items():
            t, c = time.perf_counter(), time.process_time()
            scores[name], passes[name] = run()
            best[name] = min(best[name], time.perf_counter() - t)
            cpu[name] = min(cpu[name], time.process_time() - c)

    ref = scores["one_by_one"]
    report = {"model": handle.name, "device": str(handle.device), "dtype": str(handle.dtype),
              "threads": torch.get_num_threads(), "prompt_tokens": int(ids.shape[1]), "interventions": len(ivs),
              "reps": args.reps, "methods": {}}
    print(f"head sweep: {len(ivs)} zero ablations of {handle.name} on a {ids.shape[1]}-token prompt "
          f"({handle.device}, {str(handle.dtype).replace('torch.', '')}, {torch.get_num_threads()} threads; "
          f"best of {args.reps})")
    for name in methods:
        diff = max(float((scores[name][k] - ref[k]).abs().max()) for k in ("log_prob", "logit_diff", "target_prob", "kl"))
        same_top = bool((scores[name]["top_id"] == ref["top_id"]).all())
        speedup = best["one_by_one"] / best[name]
        cpu_speedup = cpu["one_by_one"] / cpu[name]
        report["methods"][name] = {"seconds": best[name], "cpu_seconds": cpu[name], "forward_passes": passes[name],
                                   "speedup": speedup, "cpu_speedup": cpu_speedup, "max_abs_diff": diff,
                                   "same_top1": same_top}
        print(f"  {name:<18} {best[name]:8.2f} s wall {cpu[name]:8.2f} s cpu  {passes[name]:4d} passes  "
              f"speedup {speedup:5.2f}x (cpu {cpu_speedup:5.2f}x)  max abs diff {diff:.2e}  same top-1 {same_top}")
    main_name = f"batched_{rows_options[0]}"
    m = report["methods"][main_name]
    print(f"batched exact head sweep vs one pass per head: speedup {m['speedup']:.2f}x wall, "
          f"{m['cpu_speedup']:.2f}x cpu (goal >= 3x), max abs diff {m['max_abs_diff']:.2e} (goal <= 1e-4)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
