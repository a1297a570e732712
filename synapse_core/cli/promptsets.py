"""`ablate --prompt-set FILE` and `sweep --prompt-set FILE`: the same commands over a prompt set
(`prompt | target | contrast` lines, or a .csv), on the local engine or on Ray.

    synapse ablate --prompt-set ioi.txt --heads 0.6 --json
    synapse sweep --prompt-set ioi.txt --engine ray --ray-actors 2 --progress --json

--json prints `prompts` (one entry a prompt, in file order: prompt, target, contrast, clean, ablated,
effect), the aggregate and `experiment`: the same hash whichever engine ran it.
"""
from __future__ import annotations

import sys

from ..common.errors import BadInput
from . import common as cli

RESOURCE_FLAGS = ("ray_actors", "ray_cpus_per_actor", "ray_gpus_per_actor")


def add_job_args(p) -> None:
    p.add_argument("--prompt-set", default=None, metavar="FILE",
                   help="run over a prompt set: `prompt | target | contrast` lines, or a .csv (prompt,target,contrast)")
    add_engine_args(p, "a prompt set")


def add_engine_args(p, what: str) -> None:
    """--engine, --ray-address, --ray-actors and what each actor reserves: where `what` runs (read
    back by engine_of; each flag wins over its SYNAPSE_* variable and .streamlit/secrets.toml)."""
    p.add_argument("--engine", default=None, choices=("local", "ray"),
                   help=f"where to run {what}: local (default; or SYNAPSE_ENGINE) or ray")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="ray://head:10001, host:port or auto (default SYNAPSE_RAY_ADDRESS; none: a local cluster)")
    p.add_argument("--ray-actors", type=int, default=None, metavar="N",
                   help="model actors (default SYNAPSE_RAY_ACTORS, else one per GPU, else 2)")
    p.add_argument("--ray-cpus-per-actor", type=float, default=None, metavar="C",
                   help="CPUs each actor reserves, also its torch threads (default SYNAPSE_RAY_CPUS_PER_ACTOR, else 1)")
    p.add_argument("--ray-gpus-per-actor", type=float, default=None, metavar="G",
                   help="GPUs each actor reserves (default SYNAPSE_RAY_GPUS_PER_ACTOR, else 1 when the cluster has "
                        "GPUs, else 0)")


def read_cases(args):
    """The cases of --prompt-set, or None without it; --prompt/--target/--contrast are refused beside it."""
    if not args.prompt_set:
        if args.engine or args.ray_address or any(getattr(args, f) is not None for f in RESOURCE_FLAGS):
            raise BadInput("--engine and the --ray-* flags apply to --prompt-set runs only")
        return None
    if args.prompt or args.target or args.contrast:
        raise BadInput("give either --prompt-set or --prompt/--target/--contrast, not both")
    return cli.read_prompt_file(args.prompt_set, "prompt set")


def require_prompt(args) -> None:
    """A single run needs --prompt and --target (argparse no longer requires them: --prompt-set replaces both)."""
    if args.prompt is None or args.target is None:
        raise BadInput("give --prompt and --target (or --prompt-set FILE)")


def engine_of(args):
    """The EngineConfig of add_engine_args' flags, over SYNAPSE_ENGINE / SYNAPSE_RAY_*."""
    from ..jobs.config import engine_config

    given = {"cpus_per_actor": args.ray_cpus_per_actor, "gpus_per_actor": args.ray_gpus_per_actor}
    return engine_config(args.engine, args.ray_address, args.ray_actors,
                         **{k: v for k, v in given.items() if v is not None})


def _progress(args):
    if not getattr(args, "progress", False):
        return None

    def report(done, total, message):
        print(f"[{done}/{total}] {message}", file=sys.stderr)

    return report


def _notes(exp, r) -> None:
    if exp.from_cache:
        print(f"note: answered from the store (experiment {exp.hash})", file=sys.stderr)
    for line in (*exp.notes, *r.notes):
        print(f"note: {line}", file=sys.stderr)


def ablate_set(args, cases, ivs, settings) -> None:
    """Evaluate the interventions over the prompt set; print per-prompt and aggregate results."""
    from ..experiments.records import promptset_config, run_experiment

    engine = engine_of(args)
    handle = cli.load(args)
    masks = cli.run_masks(args, handle)
    config = promptset_config(handle, cases, ivs, masks, settings)
    exp = run_experiment(handle, config, progress=_progress(args), engine=engine)
    r = exp.result
    _notes(exp, r)
    metric = r.metric
    prompts = [{"prompt": row.case.prompt, "target": row.case.target, "contrast": row.case.contrast,
                "clean": None if metric == "kl" else row.clean.value(metric),
                "ablated": row.kl if metric == "kl" else row.intervened.value(metric),
                "effect": row.change(metric), "kl": row.kl, "top1_changed": row.top1_changed} for row in r.rows]
    payload = {"metric": metric, "prompts": prompts, "mean_effect": r.mean_change, "mean_kl": r.mean_kl,
               "top1_changed_fraction": r.top1_changed_fraction, "experiment": exp.hash}
    lines = [(f"{args.mode} {', '.join(iv.name for iv in r.interventions)} over {len(r.rows)} prompts: "
              f"mean change in {metric} {r.mean_change:+.4f}, mean KL {r.mean_kl:.5f}, "
              f"top-1 changed on {r.top1_changed_fraction:.0%}")]
    lines += [f"  {p['effect']:+.4f}  {p['prompt'][:60]!r}" for p in prompts[:20]]
    lines.append(f"experiment: {exp.hash}")
    cli.emit(args, payload, "\n".join(lines))


def sweep_set(args, cases, sites, positions, source, settings, batch_rows, features=None) -> None:
    """Sweep every head (or layer site, or with `features` the SAE sites[0]'s features: the indices
    given, or None for the --top most active on the set) on each prompt of the set; print each map
    and their mean."""
    from ..experiments.records import feature_promptsweep_config, promptsweep_config, run_experiment

    engine = engine_of(args)
    handle = cli.load(args)
    masks = cli.run_masks(args, handle)
    if args.over == "features":
        config = feature_promptsweep_config(handle, cases, sites[0], features, args.top, positions, masks=masks)
    else:
        config = promptsweep_config(handle, cases, sites, args.mode, positions, source, masks=masks, settings=settings)
    exp = run_experiment(handle, config, progress=_progress(args), batch_rows=batch_rows, engine=engine)
    r = exp.result
    _notes(exp, r)
    payload = {"metric": r.metric, "kind": r.kind, "prompts": r.prompt_rows(), "features": list(r.sweeps[0].features),
               "mean_effects": r.mean_effects.tolist(), "mean_kl": r.mean_kl.tolist(),
               "top": [{"name": n, "mean_effect": e} for n, e in r.top(10)], "experiment": exp.hash}
    lines = [f"{args.mode} sweep over {args.over} on {len(r.cases)} prompts: mean effect on {r.metric}",
             "largest mean effects:"]
    lines += [f"  {name:<24} {effect:+.4f}" for name, effect in r.top(10)]
    lines.append(f"experiment: {exp.hash}")
    cli.emit(args, payload, "\n".join(lines))


def stage_printer(args):
    """progress(stage, done, total) printing `stage done/total` on stderr under --progress, else None."""
    if not getattr(args, "progress", False):
        return None

    def report(stage, done, total):
        print(f"{stage} {done}/{total}", file=sys.stderr, flush=True)

    return report
