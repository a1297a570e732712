"""Trace figures on the bundled model, measured in one run:

1. traced generation vs HF generate on the same tokens (goal: at most 1.10x with the fidelity check
   on): runs alternate (HF generate, traced, untraced) and each repetition gives its own ratios, so a
   busy machine slows all three alike; medians are printed. "Text shown" is when the page can show the
   generated text (trace's on_generated), "with fidelity" when activity and attention
   (read during generation) are assembled and the fidelity pass has checked them;
2. token influence (integrated gradients) vs one forward + backward pass (what gradient x input cost);
3. cold vs warm model load (goal: warm under 4 s), each in a fresh process;
4. peak memory of tracing a 1,024-token prompt (goal: at most 2 GiB peak RSS for the process).

Usage: python benchmarks/trace_overhead.py [--tokens 32] [--reps 7] [--threads N] [--skip-load]
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
    n = len(decode(handle, ids, tokens, {}, Sampling()).ids)  # greedy may stop early on EOS: same count for HF
    trace(handle, PROMPT, 4)  # warm-up
    rows = []
    for _ in range(reps):
        row = {}
        t = time.perf_counter()
        handle.model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        row["hf_generate_s"] = time.perf_counter() - t
        shown = {}
        t = time.perf_counter()
        result = trace(handle, PROMPT, tokens, on_generated=lambda gen: shown.setdefault("at", time.perf_counter()))
        row["traced_s"] = time.perf_counter() - t
        row["text_shown_s"] = shown["at"] - t
        t = time.perf_counter()
        out = decode(handle, ids, tokens, {}, Sampling())
        row["untraced_s"] = time.perf_counter() - t
        rows.append(row)
    assert list(result.generated_ids) == out.ids, "traced and untraced generation disagree"
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    ratios = {
        "traced_over_hf_generate": statistics.median(r["traced_s"] / r["hf_generate_s"] for r in rows),
        "text_shown_over_hf_generate": statistics.median(r["text_shown_s"] / r["hf_generate_s"] for r in rows),
        "untraced_over_hf_generate": statistics.median(r["untraced_s"] / r["hf_generate_s"] for r in rows),
        "traced_over_untraced": statistics.median(r["traced_s"] / r["untraced_s"] for r in rows),
    }
    return {"tokens": len(out.ids), **med, "read_and_check_s": med["traced_s"] - med["text_shown_s"], **ratios,
            "fidelity": {"argmax_agreement": result.fidelity.argmax_agreement,
                         "max_logit_diff": result.fidelity.max_logit_diff}}


def bench_influence(reps: int) -> dict:
    """Integrated gradients for the first generated token vs one forward + backward pass over the same
    context (one gradient, what gradient x input took)."""
    import torch

    from synapse_core import load_model
    from synapse_core.analysis.influence import _log_probs, token_influence
    from synapse_core.analysis.trace import trace

    handle = load_model("bundled", device="cpu", dtype="float32")
    out = {}
    for prompt in (PROMPT, "The capital of Australia is the city of"):
        result = trace(handle, prompt, 1, capture_attention=False)
        embeds = handle.model.get_input_embeddings()(torch.tensor([result.prompt_ids])).detach()
        one, ig = [], []
        for _ in range(reps):
            t = time.perf_counter()
            _log_probs(handle, embeds, result.generated_ids[0], grad=True)
            one.append(time.perf_counter() - t)
        for _ in range(max(1, reps // 3)):
            t = time.perf_counter()
            inf = token_influence(handle, result.prompt_ids, result.generated_ids, 0)
            ig.append(time.perf_counter() - t)
        o, g = statistics.median(one), statistics.median(ig)
        out[prompt] = {"token": inf.output_token, "one_backward_s": o, "integrated_gradients_s": g, "ratio": g / o,
                       "gradients": inf.points, "passes": inf.passes,
                       "completeness_error": inf.completeness_error}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-load", action="store_true", help="skip the load and memory figures (child processes)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if not args.skip_load:
        with tempfile.TemporaryDirectory() as tmp:
            env.update(SYNAPSE_HOME=tmp, SYNAPSE_MODEL_CACHE=str(Path(tmp) / "models"))
            cold = _child(_LOAD_CHILD, env)
            warm = [_child(_LOAD_CHILD, env) for _ in range(3)]
            memory = _child(_MEMORY_CHILD, env)
    gen = bench_generation(args.tokens, args.reps)
    print(f"generation of {gen['tokens']} tokens, {args.reps} alternating runs (medians):")
    print(f"  HF generate {gen['hf_generate_s']:.3f} s, untraced {gen['untraced_s']:.3f} s, traced {gen['traced_s']:.3f} s "
          f"(text shown at {gen['text_shown_s']:.3f} s; activity, attention and the fidelity pass after it {gen['read_and_check_s']:.3f} s)")
    print(f"  traced with fidelity / HF generate = {gen['traced_over_hf_generate']:.3f}x (goal <= 1.10x); "
          f"text shown / HF generate = {gen['text_shown_over_hf_generate']:.3f}x; "
          f"untraced / HF generate = {gen['untraced_over_hf_generate']:.3f}x; "
          f"traced / untraced = {gen['traced_over_untraced']:.3f}x")
    print(f"  fidelity: argmax agreement {gen['fidelity']['argmax_agreement']:.0%}, "
          f"max logit diff {gen['fidelity']['max_logit_diff']:.2e}")
    influence = bench_influence(max(3, args.reps // 2))
    for prompt, f in influence.items():
        print(f"token influence of {f['token']!r} after {prompt!r}: integrated gradients {f['integrated_gradients_s']:.2f} s "
              f"= {f['ratio']:.0f}x one forward + backward ({f['one_backward_s']:.3f} s); {f['gradients']} gradients "
              f"in {f['passes']} passes, completeness error {f['completeness_error']:.2%}")
    report = {"generation": gen, "influence": influence}
    if not args.skip_load:
        warm_load = statistics.median(w["load_s"] for w in warm)
        warm_total = statistics.median(w["load_s"] + w["import_s"] for w in warm)
        peak_gib = memory["peak_after_kib"] / 2**20
        print(f"model load: cold {cold['load_s']:.2f} s ({cold['source']}), warm {warm_load:.2f} s "
              f"({warm[0]['source']}); warm with imports {warm_total:.2f} s (goal: warm < 4 s); "
              f"cold / warm = {cold['load_s'] / warm_load:.1f}x")
        print(f"tracing a {memory['prompt_tokens']}-token prompt: peak RSS {peak_gib:.2f} GiB "
              f"(before trace {memory['peak_before_kib'] / 2**20:.2f} GiB; goal <= 2 GiB); "
              f"kept attention {memory['attention_bytes'] / 2**20:.1f} MiB")
        report.update(cold_load=cold, warm_load=warm, memory=memory)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
