"""Issue-15 figures on the bundled model: what a quarantine costs, and how long the report takes.

1. cost report time for 1, 5 and 20 heads (the first heads of the hallucination discovery's verified
   candidates) over the 120 capability prompts and --tokens tokens of the corpus's held-out split:
   with the text score and prompt logits of the masks in force taken from the store (as every report
   after the first runs) and cold (those computed too);
2. the same work with one forward pass per prompt and per window, for the middle size (the per-window
   time measured on 8 windows and scaled to all of them);
3. the guided demo's hallucination example ("The capital of Australia is the city of", ' Sydney'
   vs ' Canberra'): the cost of the discovered circuit (0.6, 23.5, 21.3 on a CPU) and of the
   cheapest set the greedy search finds reaching 80% of its effect.

Usage: python benchmarks/cost.py [--tokens 20000] [--window 256] [--threads N] [--sizes 1,5,20]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "The capital of Australia is the city of"
TARGET, CONTRAST = " Sydney", " Canberra"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--sizes", default="1,5,20")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from synapse_core import load_model
    from synapse_core.analysis.capabilities import default_capabilities
    from synapse_core.analysis.cost import cost_config, cost_report
    from synapse_core.analysis.discovery import discover, discovery_config
    from synapse_core.analysis.perplexity import corpus_docs, score_text, windows
    from synapse_core.hooks.masking import mask_fns
    from synapse_core.interventions.ops import forward_last
    from synapse_core.interventions.promptset import PromptCase

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}")
    handle = load_model("bundled", device="cpu", dtype="float32")
    t = time.perf_counter()
    docs = corpus_docs(handle, args.tokens, args.window)
    print(f"corpus: {len(docs.documents)} held-out documents, {sum(map(len, docs.documents))} tokens "
          f"(read and tokenized in {time.perf_counter() - t:.1f} s)")
    caps = default_capabilities()
    target = (PromptCase(PROMPT, TARGET, CONTRAST),)

    t = time.perf_counter()
    found = discover(handle, discovery_config(handle, PROMPT, TARGET, CONTRAST, top_k_heads=3, max_pair_sweeps=1))
    circuit = [f"{h.layer}.{h.head}" for h in found.heads]
    candidates = [f"{h.layer}.{h.head}" for h in found.candidates]
    print(f"discovery ({time.perf_counter() - t:.1f} s): circuit {', '.join(circuit)}, effect "
          f"{found.circuit.effect:+.3f} on {found.metric}; {len(candidates)} verified candidates")

    t = time.perf_counter()
    before = score_text(handle, docs, args.window)
    text_s = time.perf_counter() - t
    print(f"\ntext score with the masks in force ({before.tokens} tokens, {len(before.doc_of)} windows): "
          f"{text_s:.1f} s = {before.tokens / text_s:.0f} tokens/s; perplexity {before.perplexity:.3f}")

    from synapse_core.analysis.capabilities import next_token_logits
    from synapse_core.analysis.cost import prompts_of

    t = time.perf_counter()
    logits = next_token_logits(handle, prompts_of(cost_config(handle, [], (), docs, args.window, caps, target)))
    prompts_s = time.perf_counter() - t
    print(f"prompt logits with the masks in force ({len(caps) + 1} prompts, batched): {prompts_s:.1f} s")
    before_s = text_s + prompts_s
    demo(handle, found, circuit, docs, args.window, caps, target, before, logits)

    print("\n1-2. cost report time (capabilities + text), batched vs one forward pass per prompt / window")
    sizes = [int(s) for s in args.sizes.split(",")]
    baseline_at = sizes[len(sizes) // 2]  # the unbatched comparison once, for the middle size (5 heads)
    for n in sizes:
        heads = candidates[:n]
        config = cost_config(handle, heads, (), docs, args.window, caps, target)
        t = time.perf_counter()
        report = cost_report(handle, config, docs, text_before=before, logits_before=logits)
        warm = time.perf_counter() - t
        print(f"  {n:>2} heads: report {warm:.1f} s with the stored scores of the masks in force, "
              f"{warm + before_s:.1f} s cold "
              f"({report.forward_passes} batched passes)", flush=True)
        print(f"      {report.verdict()}", flush=True)
        if n != baseline_at:
            continue
        masks = config.added
        t = time.perf_counter()
        for c in [*caps, *target]:
            ids = handle.tokenizer(c.prompt, return_tensors="pt").input_ids
            forward_last(handle, ids, {})
            forward_last(handle, ids, mask_fns(masks))
        per_prompt = time.perf_counter() - t
        kept = windows(docs.documents, args.window)
        t = time.perf_counter()
        with torch.inference_mode():
            from synapse_core.hooks.dispatch import hooks

            with hooks(handle.model, handle.arch, mask_fns(masks)):
                for _, piece in kept[:8]:
                    handle.model(input_ids=torch.tensor([piece]), use_cache=False)
        per_window = (time.perf_counter() - t) / min(8, len(kept)) * len(kept) * 2  # before and after
        print(f"      the same {n}-head report with one forward pass per prompt and window: capabilities "
              f"{per_prompt:.1f} s + text {per_window:.1f} s (est.) = {per_prompt + per_window:.1f} s", flush=True)


def demo(handle, found, circuit, docs, window, caps, target, before, logits) -> None:
    from synapse_core.analysis.cheapest import cheapest_set
    from synapse_core.analysis.cost import cost_config, cost_report

    print("\n3. the hallucination example", flush=True)
    config = cost_config(handle, circuit, (), docs, window, caps, target)
    circ = cost_report(handle, config, docs, text_before=before, logits_before=logits)
    print(f"  circuit {', '.join(circuit)}: {circ.verdict()}")
    t = time.perf_counter()
    search = cheapest_set(handle, found, 0.8)
    print(f"  greedy search ({time.perf_counter() - t:.1f} s, {search.rows} head sets ablated): "
          + "; ".join(f"{', '.join(f'{h.layer}.{h.head}' for h in s.heads)} -> {s.share:.0%}" for s in search.steps))
    if search.chosen is None:
        print("  no set of the candidates reaches 80% of the circuit's effect")
        return
    chosen = [f"{h.layer}.{h.head}" for h in search.chosen]
    cheap = cost_report(handle, cost_config(handle, chosen, (), docs, window, caps, target), docs,
                        text_before=before, logits_before=logits)
    print(f"  cheapest set reaching 80% ({', '.join(chosen)}): {cheap.verdict()}")


if __name__ == "__main__":
    main()
