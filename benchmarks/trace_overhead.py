"""Issue-2 figures on the bundled model, measured in one run:

1. traced vs untraced generation time (goal: traced at most 1.3x untraced);
2. cold vs warm model load (goal: warm under 4 s), each in a fresh process;
3. peak memory of tracing a 1,024-token prompt (goal: at most 2 GiB peak RSS for the process).

Usage: python benchmarks/trace_overhead.py [--tokens 32] [--reps 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "The Eiffel Tower is in the city of"

_LOAD_CHILD = """
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from synapse_core import load_model
t1 = time.perf_counter()
handle = load_model("bundled", device="cpu", dtype="float32")
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "source": handle.source}}))
"""

_MEMORY_CHILD = """
import json, resource, sys
sys.path.insert(0, {root!r})
from synapse_core import load_model
from synapse_core.analysis.trace import trace
handle = load_model("bundled", device="cpu", dtype="float32")
tok = handle.tokenizer
words = ("the tower stands in a city of light and the river runs past old stone bridges " * 200).split()
text, n = "", 0
for w in words:
    cand = (text + " " + w).strip()
    if len(tok(cand).input_ids) > 1024:
        break
    text = cand
n = len(tok(text).input_ids)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = trace(handle, text, max_new_tokens=8)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"prompt_tokens": n, "peak_before_kib": before, "peak_after_kib": after,
                  "attention_bytes": int(result.attention.nbytes)}}))
"""


def _child(code: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT))], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_generation(tokens: int, reps: int) -> dict:
    from synapse_core import load_model
    from synapse_core.analysis.trace import trace
    from synapse_core.model.generation import Sampling, decode
    from synapse_core.model.tokens import encode_prompt

    handle = load_model("bundled", device="cpu", dtype="float32")
    ids, _ = encode_prompt(handle, PROMPT)
    # greedy generation may stop early on EOS; count tokens actually produced
    plain, traced, hf = [], [], []
    trace(handle, PROMPT, 4)  # warm-up
    for _ in range(reps):
        t = time.perf_counter()
        out = decode(handle, ids, tokens, {}, Sampling())
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        result = trace(handle, PROMPT, tokens)
        traced.append(time.perf_counter() - t)
        t = time.perf_counter()
        handle.model.generate(ids, max_new_tokens=len(out.ids), min_new_tokens=len(out.ids), do_sample=False)
        hf.append(time.perf_counter() - t)
    assert list(result.generated_ids) == out.ids, "traced and untraced generation disagree"
    p, tr, h = statistics.median(plain), statistics.median(traced), statistics.median(hf)
    return {"tokens": len(out.ids), "untraced_s": p, "traced_s": tr, "hf_generate_s": h,
            "traced_over_untraced": tr / p, "traced_over_hf_generate": tr / h}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    with tempfile.TemporaryDirectory() as tmp:
        env.update(SYNAPSE_HOME=tmp, SYNAPSE_MODEL_CACHE=str(Path(tmp) / "models"))
        cold = _child(_LOAD_CHILD, env)
        warm = [_child(_LOAD_CHILD, env) for _ in range(3)]
        memory = _child(_MEMORY_CHILD, env)
        os.environ.update(SYNAPSE_HOME=tmp, SYNAPSE_MODEL_CACHE=env["SYNAPSE_MODEL_CACHE"])
        gen = bench_generation(args.tokens, args.reps)
    warm_load = statistics.median(w["load_s"] for w in warm)
    warm_total = statistics.median(w["load_s"] + w["import_s"] for w in warm)
    peak_gib = memory["peak_after_kib"] / 2**20
    print(f"generation of {gen['tokens']} tokens (median of {args.reps}):")
    print(f"  untraced {gen['untraced_s']:.3f} s, traced {gen['traced_s']:.3f} s, HF generate {gen['hf_generate_s']:.3f} s")
    print(f"  traced / untraced = {gen['traced_over_untraced']:.3f}x (goal <= 1.3x); "
          f"traced / HF generate = {gen['traced_over_hf_generate']:.3f}x")
    print(f"model load: cold {cold['load_s']:.2f} s ({cold['source']}), warm {warm_load:.2f} s "
          f"({warm[0]['source']}); warm with imports {warm_total:.2f} s (goal: warm < 4 s); "
          f"cold / warm = {cold['load_s'] / warm_load:.1f}x")
    print(f"tracing a {memory['prompt_tokens']}-token prompt: peak RSS {peak_gib:.2f} GiB "
          f"(before trace {memory['peak_before_kib'] / 2**20:.2f} GiB; goal <= 2 GiB); "
          f"kept attention {memory['attention_bytes'] / 2**20:.1f} MiB")
    print(json.dumps({"generation": gen, "cold_load": cold, "warm_load": warm, "memory": memory}))


if __name__ == "__main__":
    main()
