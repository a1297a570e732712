"""CLI commands `graph` (an attribution graph of the next token) and `lens` (the logit lens).

    python -m synapse_core graph --prompt "The capital of Australia is the city of" \
        --target " Sydney" --contrast " Canberra" --out graph.json --json
    python -m synapse_core lens --prompt "The Eiffel Tower is in the city of" --token " Paris" --json

`graph --json` prints the pruned graph (nodes, edges), every direct input of the output
(logit_inputs), output_value, completeness_error, replacement_score and completeness_score;
--out writes the graph in circuit-tracer's format, --csv-prefix P writes P.nodes.csv and P.edges.csv.
"""
from __future__ import annotations

from pathlib import Path

from ..common.errors import BadInput
from . import common as cli


def _graph_args(p):
    cli.add_model_args(p)
    cli.add_mask_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--target", required=True, help="the token whose logit the graph explains, e.g. \" Sydney\"")
    p.add_argument("--contrast", default=None, help="explain logit(target) - logit(contrast) instead")
    p.add_argument("--node-threshold", type=float, default=0.8, help="share of influence the kept nodes carry")
    p.add_argument("--edge-threshold", type=float, default=0.98, help="share of influence the kept edges carry")
    p.add_argument("--claims", type=int, default=20, help="top nodes checked by real ablation (default 20)")
    p.add_argument("--transcoder", action="append", default=[], metavar="NAME",
                   help="replace a layer's MLP blocks by this transcoder's features and error nodes (a catalog name "
                        "or an SAELens folder reading blocks.L.ln2.hook_normalized, writing blocks.L.hook_mlp_out); "
                        "repeatable")
    p.add_argument("--out", default=None, metavar="FILE", help="write the graph in circuit-tracer's JSON format")
    p.add_argument("--csv-prefix", default=None, metavar="P", help="write P.nodes.csv and P.edges.csv")


def _write(path: str, text: str) -> None:
    target = Path(path)
    if target.is_dir():
        raise BadInput(f"{target} is a folder: give a file name")
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot write {target}: {exc.strerror}") from exc


def _graph(args):
    from ..experiments.graphs import graph_config, run_graph
    from ..graphs.graph import dump_json, edges_csv, nodes_csv

    if not args.prompt.strip():
        raise BadInput("the prompt is empty: give --prompt some text")
    handle = cli.load(args)
    config = graph_config(handle, args.prompt, args.target, args.contrast, cli.run_masks(args, handle),
                          args.node_threshold, args.edge_threshold, args.claims, tuple(args.transcoder))
    exp = run_graph(handle, config)
    g = exp.result
    if args.out:
        _write(args.out, dump_json(g))
    if args.csv_prefix:
        _write(f"{args.csv_prefix}.nodes.csv", nodes_csv(g))
        _write(f"{args.csv_prefix}.edges.csv", edges_csv(g))
    payload = dict(g.to_json(), experiment=exp.hash, from_cache=exp.from_cache)
    rho = "n/a" if g.rho is None else f"{g.rho:.2f}"
    top = sorted(g.nodes, key=lambda n: -n.influence)[:10]
    lines = [(f"{g.output_label} = {g.output_value:+.4f} (direct inputs + constant: completeness error "
              f"{g.completeness_error:.1e}; worst node {g.worst_node_error:.1e})"),
             (f"{len(g.nodes)} of {g.n_nodes} nodes, {len(g.edges)} of {g.n_edges} edges kept; replacement score "
              f"{g.replacement_score:.3f}, completeness score {g.completeness_score:.3f}"),
             *(f"  {n.label:<16} value {n.value:+.3f}  influence {n.influence:.3f}" for n in top),
             f"claims vs real ablation: Spearman's rho over {len(g.claims)} nodes {rho}",
             f"experiment {exp.hash}" + (" (from the store)" if exp.from_cache else "")]
    cli.emit(args, payload, "\n".join(lines))


def _lens_args(p):
    cli.add_model_args(p)
    cli.add_mask_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--token", default=None, help="the token to follow (default: the model's prediction)")
    p.add_argument("--top-k", type=int, default=5, help="top tokens per layer and position")


def _lens(args):
    from ..analysis.lens import logit_lens

    if not args.prompt.strip():
        raise BadInput("the prompt is empty: give --prompt some text")
    handle = cli.load(args)
    r = logit_lens(handle, args.prompt, args.token, cli.run_masks(args, handle), args.top_k)
    lines = [f"{row:>5}  p={r.probs[i, -1]:.3f}  rank {r.ranks[i, -1]:>5}  top {r.top_tokens[i][-1][0]!r}"
             for i, row in enumerate(r.rows)]
    lines.append(f"{r.token!r} first on top at the last position after layer {r.first_top_row()}")
    cli.emit(args, r.to_json(), "\n".join(lines))


COMMANDS = [
    ("graph", "attribution graph of the next token: exact edges of the frozen model, pruned", _graph_args, _graph),
    ("lens", "logit lens: every layer's residual stream read through the unembedding", _lens_args, _lens),
]
