"""Issue-14 figures on the bundled model, measured in one run:

1. time and peak memory to build the whole attribution graph of a 16-token and a 64-token prompt,
   against one forward + one backward pass of the real model (the floor) and against one backward
   pass per node (projected: nodes x the measured time of one backward pass), with where the time went;
2. completeness error at the output and at the worst node, replacement and completeness scores;
3. Spearman's rho between claimed and measured node effects (top 20 nodes) on the guided-demo prompts.

Peak memory is the process's peak resident set above what it held with the model loaded (ru_maxrss,
monotonic: the 16-token graph is built first, so the 64-token figure is its own).

Usage: python benchmarks/graph.py [--threads 1] [--sizes 16 64]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEMO = (("The capital of Australia is the city of", " Sydney", " Canberra"),
        ("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
        ("The Eiffel Tower is in the city of", " Paris", " London"))
FILLER = ("Australia is a large country in the southern hemisphere, known for its beaches, deserts and cities. "
          "Many visitors fly into its biggest airports every year, and most of them ask the same question about "
          "where the government sits and which city is the real capital of the country. ")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def prompt_of(handle, n_tokens: int) -> str:
    """The Sydney prompt with filler text in front, cut to exactly n_tokens tokens."""
    tail = handle.tokenizer(DEMO[0][0], add_special_tokens=False).input_ids
    head = handle.tokenizer(FILLER * 4, add_special_tokens=False).input_ids
    ids = head[: n_tokens - len(tail)] + tail
    text = handle.tokenizer.decode(ids)
    assert len(handle.tokenizer(text).input_ids) == n_tokens, "the prompt does not re-encode to its length"
    return text


def floor_seconds(handle, prompt: str, target) -> tuple[float, float]:
    """(one forward + one backward pass of the logit difference to the embeddings, one backward pass alone)."""
    import torch


    ids = handle.tokenizer(prompt, return_tensors="pt").input_ids
    embed = handle.model.get_input_embeddings()
    best_fb, best_b = float("inf"), float("inf")
    for _ in range(3):
        with torch.enable_grad():
            start = time.perf_counter()
            x = embed(ids).detach().requires_grad_(True)
            logits = handle.model(inputs_embeds=x, use_cache=False).logits[0, -1]
            value = logits[target.id] - logits[target.contrast_id]
            mid = time.perf_counter()
            torch.autograd.grad(value, x)
            end = time.perf_counter()
        best_fb, best_b = min(best_fb, end - start), min(best_b, end - mid)
    return best_fb, best_b


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from synapse_core import load_model
    from synapse_core.graphs.adjacency import max_tokens
    from synapse_core.graphs.build import build_graph, graph_target

    handle = load_model("bundled", device="cpu", dtype="float32")
    target = graph_target(handle, DEMO[0][1], DEMO[0][2])
    floor_seconds(handle, DEMO[0][0], target)  # warm up
    base = peak_mb()
    print(f"model {handle.name} · {handle.arch.n_layers} layers x {handle.arch.n_heads} heads · torch threads "
          f"{torch.get_num_threads()} · graph size limit {max_tokens(handle.arch.n_layers, handle.arch.n_heads)} "
          f"tokens · resident with the model loaded {base:.0f} MB")
    for n in args.sizes:
        prompt = prompt_of(handle, n)
        fb, b = floor_seconds(handle, prompt, target)
        start = time.perf_counter()
        g = build_graph(handle, prompt, DEMO[0][1], DEMO[0][2])
        total = time.perf_counter() - start
        graph_s = total - dict(g.seconds).get(next(k for k, _ in g.seconds if k.startswith("claims")), 0.0)
        print(f"\n{n} tokens: {g.n_nodes} nodes, {g.n_edges} nonzero edges, adjacency "
              f"{4 * g.n_nodes ** 2 / 2 ** 20:.0f} MB")
        print(f"  whole graph {total:.1f} s (graph {graph_s:.1f} s + claims); peak memory "
              f"{peak_mb() - base:.0f} MB above the loaded model")
        for name, s in g.seconds:
            print(f"    {name:<55} {s:6.2f} s")
        print(f"  floor: one forward + backward {fb:.3f} s -> graph (without claims) = {graph_s / fb:.0f}x the floor")
        print(f"  one backward per node: {g.n_nodes} x {b:.3f} s = {g.n_nodes * b:.0f} s (projected) -> "
              f"{g.n_nodes * b / graph_s:.0f}x slower than the batched graph")
        print(f"  completeness error: output {g.completeness_error:.1e}, worst node {g.worst_node_error:.1e} "
              f"({g.worst_node}); replacement score {g.replacement_score:.3f}, completeness score "
              f"{g.completeness_score:.3f}; rho {g.rho if g.rho is None else round(g.rho, 3)}")
        del g
    print("\nguided-demo prompts (claims: top 20 nodes by influence, zero-ablated at their position):")
    for prompt, tgt, contrast in DEMO:
        g = build_graph(handle, prompt, tgt, contrast)
        agree = sum(c.claimed * c.measured > 0 for c in g.claims)
        print(f"  {prompt!r} -> {tgt!r} vs {contrast!r}: {g.output_label} = {g.output_value:+.3f}; completeness "
              f"error {g.completeness_error:.1e}; replacement {g.replacement_score:.3f}; rho "
              f"{'n/a' if g.rho is None else f'{g.rho:.3f}'} over {len(g.claims)}; same sign {agree}/{len(g.claims)}; "
              f"kept {len(g.nodes)} nodes, {len(g.edges)} edges")


if __name__ == "__main__":
    main()
