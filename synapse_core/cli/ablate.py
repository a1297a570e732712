"""CLI commands `ablate` and `sweep`, gathered by cli.main.

    python -m synapse_core ablate --prompt "The Eiffel Tower is in the city of" --target " Paris" \
        --contrast " London" --heads 5.3,7.1 --mode zero --json
    python -m synapse_core sweep --prompt "The Eiffel Tower is in the city of" --target " Paris" --json
    python -m synapse_core sweep --over features --sae layers.15.resid.post.sae --top 20 \
        --prompt "The Eiffel Tower is in the city of" --target " Paris" --json

Every run is an experiment kept in the result store: the JSON's "experiment" is its id, and the
same command twice is answered from the store. Notes and warnings go to stderr.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..common.errors import BadInput
from . import common as cli
from . import promptsets

MODES = ("zero", "mean", "patch")
FEATURE_MODES = ("clamp", "steer")  # with --feature only



def _common_args(p):
    cli.add_model_args(p)
    cli.add_mask_args(p)
    p.add_argument("--prompt", default=None, help="the prompt (or --prompt-set FILE)")
    p.add_argument("--target", default=None, help='the token to score, e.g. " Paris" (mind the leading space)')
    p.add_argument("--contrast", default=None, help="logit_diff = logit(target) - logit(contrast)")
    p.add_argument("--mode", default="zero", choices=MODES + FEATURE_MODES,
                   help="zero, mean, patch; for --feature: zero, clamp (to --value) or steer (adds --value x its "
                        "decoder direction)")
    p.add_argument("--source-prompt", default=None, help="--mode patch: the prompt activations are copied from")
    p.add_argument("--positions", default="all", help="all (default), last, or token positions: 0,3,-1")
    p.add_argument("--reference-file", default=None, metavar="F",
                   help="--mode mean: reference prompts, one per line (default: the shipped set)")
    promptsets.add_job_args(p)


def _settings(args):
    from ..interventions.ops import OpSettings
    from ..interventions.reference import parse_reference_prompts

    if args.mode == "patch" and not (args.source_prompt or "").strip():
        raise BadInput("--mode patch needs --source-prompt: the prompt to copy activations from")
    if args.mode != "patch" and args.source_prompt:
        raise BadInput(f"--source-prompt is used only with --mode patch (got --mode {args.mode})")
    if args.reference_file and args.mode != "mean":
        raise BadInput(f"--reference-file is used only with --mode mean (got --mode {args.mode})")
    if not args.reference_file:
        return OpSettings()
    try:
        text = Path(args.reference_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read --reference-file {args.reference_file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"--reference-file {args.reference_file} is not UTF-8 text (byte {exc.start})") from None
    return OpSettings(reference=parse_reference_prompts(text))


def _say(exp, result) -> None:
    from ..arch.spec import mask_name

    if exp.from_cache:
        print(f"note: answered from the store (experiment {exp.hash})", file=sys.stderr)
    for line in (*exp.notes, *result.notes):
        print(f"note: {line}", file=sys.stderr)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if result.masks:
        print("note: masked heads: " + ", ".join(f"{mask_name(m)} ({m.level})" for m in result.masks), file=sys.stderr)


# ---- ablate ---------------------------------------------------------------------------------


def _ablate_args(p):
    _common_args(p)
    p.add_argument("--heads", default="", help="heads to intervene on together: L.H,L.H,...")
    p.add_argument("--components", default="", help="other components: layers.L.attn, layers.L.mlp, layers.L.resid, ...")
    p.add_argument("--feature", action="append", default=[], metavar="NAME",
                   help="an SAE feature, e.g. layers.15.resid.post.sae.1234 (its SAE's error term kept); repeatable")
    p.add_argument("--value", type=float, default=None, help="--mode clamp: the activation; steer: the multiple")


def _metrics_json(m) -> dict:
    return {"target_prob": m.target_prob, "logit_diff": m.logit_diff, "top_token": m.top_token}


def _ablate(args):
    from ..arch.spec import parse_heads
    from ..experiments.records import ablation_config, run_experiment
    from ..interventions.ops import parse_intervention, parse_positions

    positions = parse_positions(args.positions)
    source = args.source_prompt if args.mode == "patch" else None
    names = [h.short for h in parse_heads(args.heads)] + [c for c in args.components.replace(" ", ",").split(",") if c]
    if not names and not args.feature:
        raise BadInput("nothing to ablate: give --heads L.H,..., --components layers.L.mlp,... or --feature NAME")
    if args.mode in FEATURE_MODES and names:
        raise BadInput(f"--mode {args.mode} acts on --feature only, not on heads or components")
    settings = _settings(args)
    ivs = [parse_intervention(name, args.mode, positions, source) for name in names]
    if args.feature:
        from ..features.intervene import feature_intervention

        if args.mode not in ("zero", *FEATURE_MODES):
            raise BadInput(f"a feature is zeroed, clamped or steered, not --mode {args.mode}")
        ivs += [feature_intervention(name, args.mode, args.value, positions) for name in args.feature]
    cases = promptsets.read_cases(args)
    if cases is not None:
        return promptsets.ablate_set(args, cases, ivs, settings)
    promptsets.require_prompt(args)
    handle = cli.load(args)
    masks = cli.run_masks(args, handle)
    config = ablation_config(handle, args.prompt, args.target, ivs, args.contrast, masks, settings)
    exp = run_experiment(handle, config)
    r = exp.result
    _say(exp, r)
    payload = {"clean": _metrics_json(r.clean), "ablated": _metrics_json(r.intervened),
               "kl_divergence": r.kl_divergence, "experiment": exp.hash}
    diff = "" if r.clean.logit_diff is None else (
        f"\nlogit diff: {r.clean.logit_diff:.4f} -> {r.intervened.logit_diff:.4f}")
    text = (f"{args.mode} {', '.join(r.names)} on {args.prompt!r}, target {r.target.token!r}\n"
            f"p(target): {r.clean.target_prob:.4f} -> {r.intervened.target_prob:.4f}{diff}\n"
            f"top token: {r.clean.top_token!r} -> {r.intervened.top_token!r}\n"
            f"KL(clean || ablated): {r.kl_divergence:.5f}\nexperiment: {exp.hash}")
    cli.emit(args, payload, text)


# ---- sweep ----------------------------------------------------------------------------------


def _sweep_args(p):
    _common_args(p)
    p.add_argument("--over", default="heads", choices=("heads", "layers", "features"),
                   help="heads (default): every head; layers: every layer's attn, mlp and resid; features: features "
                        "of --sae, each zeroed (its error term kept)")
    p.add_argument("--sae", default=None, help="--over features: the SAE, e.g. layers.15.resid.post.sae")
    p.add_argument("--features", default=None, metavar="LIST",
                   help="--over features: feature indices, comma-separated (default: the --top most active)")
    p.add_argument("--top", type=int, default=20,
                   help="--over features: sweep the features most active on the prompt (default 20)")
    p.add_argument("--batch-rows", type=int, default=None, help="interventions per forward pass (default 54)")
    p.add_argument("--progress", action="store_true", help="print progress on stderr")


def _sweep(args):
    from ..experiments.records import run_experiment, sweep_config
    from ..interventions.ops import parse_positions
    from ..interventions.sweep import BATCH_ROWS, LAYER_SITES

    positions = parse_positions(args.positions)
    settings = _settings(args)
    rows = BATCH_ROWS if args.batch_rows is None else args.batch_rows  # 0 is refused, not replaced
    if rows < 1:
        raise BadInput(f"--batch-rows {rows} must be at least 1")
    if args.over == "features":
        return _feature_sweep(args, positions, rows)
    if args.sae or args.features:
        raise BadInput(f"--sae and --features are for --over features, not --over {args.over}")
    cases = promptsets.read_cases(args)
    if cases is not None:
        sites = ("attn.head",) if args.over == "heads" else LAYER_SITES
        source = args.source_prompt if args.mode == "patch" else None
        return promptsets.sweep_set(args, cases, sites, positions, source, settings, rows)
    promptsets.require_prompt(args)
    handle = cli.load(args)
    masks = cli.run_masks(args, handle)
    sites = ("attn.head",) if args.over == "heads" else LAYER_SITES
    source = args.source_prompt if args.mode == "patch" else None
    config = sweep_config(handle, args.prompt, args.target, args.contrast, sites, args.mode, positions, source,
                          masks=masks, settings=settings)
    exp = run_experiment(handle, config, progress=_progress(args), batch_rows=rows)
    _print_sweep(args, handle, exp)


def _progress(args):
    if not args.progress:
        return None

    def progress(done, total, message):
        print(f"[{done}/{total}] {message}", file=sys.stderr)

    return progress


def _feature_sweep(args, positions, rows):
    from ..experiments.records import feature_sweep_config, run_experiment

    if not args.sae:
        raise BadInput("--over features needs --sae: the SAE whose features are swept (see `features list`)")
    if args.mode != "zero":
        raise BadInput(f"a feature sweep zeroes each feature: --mode {args.mode} is not offered")
    features = None
    if args.features:
        try:
            features = tuple(int(f) for f in args.features.replace(",", " ").split())
        except ValueError:
            raise BadInput(f"--features {args.features!r}: write feature indices, comma-separated") from None
    cases = promptsets.read_cases(args)
    if cases is not None:
        return promptsets.sweep_set(args, cases, (args.sae,), positions, None, None, rows, features)
    promptsets.require_prompt(args)
    handle = cli.load(args)
    config = feature_sweep_config(handle, args.prompt, args.target, args.sae, features, args.top, args.contrast,
                                  positions, masks=cli.run_masks(args, handle))
    exp = run_experiment(handle, config, progress=_progress(args), batch_rows=rows)
    _print_sweep(args, handle, exp)


def _print_sweep(args, handle, exp):
    r = exp.result
    _say(exp, r)
    keys = {"heads": ("layer", "head"), "layers": ("layer", "site"), "features": ("feature", "name")}[r.kind]
    effects = [{**{k: e[k] for k in keys}, "effect": e["effect"]} for e in r.effect_rows()]
    payload = {"metric": r.metric, "clean": r.clean, "effects": effects, "seconds": r.seconds, "experiment": exp.hash}
    top = sorted(r.effect_rows(), key=lambda e: -abs(e["effect"]))[:10]
    lines = [f"{r.op} sweep over {args.over} of {handle.name}: {r.metric} clean {r.clean:.4f}, "
             f"{r.effects.size} interventions in {r.seconds:.1f} s ({r.forward_passes} batched passes)",
             "largest effects:"]
    lines += [f"  {e['name']:<24} {e['effect']:+.4f}" for e in top]
    lines.append(f"experiment: {exp.hash}")
    cli.emit(args, payload, "\n".join(lines))


COMMANDS = [
    ("ablate", "intervene on heads or components and compare with the clean run", _ablate_args, _ablate),
    ("sweep", "ablate every head (or layer, or SAE feature) in turn: a causal map", _sweep_args, _sweep),
]
