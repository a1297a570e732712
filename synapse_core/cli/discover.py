"""CLI command `discover`, gathered by cli.main.

    python -m synapse_core discover --prompt "When Mary and John went to the store, John gave a drink to" \
        --target " Mary" --contrast " John" --top-k 5 --max-pair-sweeps 10 --json

--prompts-file (or --prompt-set) takes `prompt | target | contrast` lines, or a .csv with columns prompt,
target[, contrast]; --engine ray runs each stage's per-prompt work on a Ray cluster (the same experiment).
"""
from __future__ import annotations

from ..common.errors import BadInput
from . import common as cli
from .promptsets import add_engine_args, engine_of, stage_printer


def _discover_args(p):
    cli.add_model_args(p)
    cli.add_mask_args(p)
    p.add_argument("--prompt", default=None)
    p.add_argument("--target", default=None, help="the token to explain, e.g. \" Mary\" (mind the leading space)")
    p.add_argument("--contrast", default=None, help="metric = logit(target) - logit(contrast); else log p(target)")
    p.add_argument("--prompts-file", "--prompt-set", default=None, metavar="F",
                   help="a prompt set: `prompt | target | contrast` lines, or a .csv (prompt,target,contrast)")
    p.add_argument("--top-k", type=int, default=5, help="heads in the circuit, 1-20 (default 5)")
    p.add_argument("--max-pair-sweeps", type=int, default=10, help="pairs ablated together, 0-190 (default 10)")
    p.add_argument("--verify", type=int, default=30, help="candidates verified by ablation (default 30)")
    p.add_argument("--draws", type=int, default=20, help="random head sets in the baseline, at least 20")
    p.add_argument("--seed", type=int, default=0, help="seed of the random head sets")
    p.add_argument("--ranking", choices=("atp", "atp*"), default="atp",
                   help="rank heads by attribution patching (default) or AtP* (later softmaxes recomputed, GradDrop: "
                        "misses fewer heads, ~25x slower ranking)")
    p.add_argument("--progress", action="store_true", help="print each stage's progress on stderr")
    add_engine_args(p, "each stage's per-prompt work")


def _cases(args):
    if not args.prompts_file:
        return None
    if args.prompt or args.target:
        raise BadInput("give either --prompts-file or --prompt/--target, not both")
    return cli.read_prompt_file(args.prompts_file, "prompts file")


def _discover(args):
    from ..analysis.discovery import discovery_config
    from ..experiments.discoveries import run_discovery

    cases = _cases(args)
    if cases is None and (args.prompt is None or not args.prompt.strip()):
        raise BadInput("the prompt is empty: give --prompt some text (or --prompts-file)")
    if cases is None and not args.target:
        raise BadInput("the target token is empty: give --target, e.g. --target \" Mary\"")
    handle = cli.load(args)
    config = discovery_config(handle, args.prompt, args.target, args.contrast, cases=cases, top_k_heads=args.top_k,
                              max_pair_sweeps=args.max_pair_sweeps, masks=cli.run_masks(args, handle),
                              verify_heads=args.verify, baseline_draws=args.draws, seed=args.seed,
                              ranking=args.ranking)
    exp = run_discovery(handle, config, progress=stage_printer(args), engine=engine_of(args))
    r = exp.result
    payload = dict(r.to_json(), experiment=exp.hash, from_cache=exp.from_cache)
    rho = "n/a" if r.spearman_rho is None else f"{r.spearman_rho:.2f}"
    lines = [f"{h.layer}.{h.head}  estimated {h.estimated_effect:+.3f}  verified {h.verified_effect:+.3f}"
             for h in r.heads]
    lines += [f"{p.a.short}+{p.b.short}  joint {p.joint_effect:+.3f}  sum {p.sum_of_singles:+.3f}  {p.label}"
              for p in r.pairs]
    lines += [r.circuit.verdict, r.evaluation,
              f"target rate {r.circuit.target_rate_before:.0%} -> {r.circuit.target_rate_after:.0%}",
              f"Spearman's rho (estimate vs verified, {r.rho_heads} heads) {rho}",
              f"ranked every head in {r.rank_seconds:.2f} s; all in {r.seconds:.1f} s; experiment {exp.hash}"
              + (" (from the store)" if exp.from_cache else "")]
    cli.emit(args, payload, "\n".join(lines))


COMMANDS = [("discover", "find the heads behind a token, verify them by ablation", _discover_args, _discover)]
