"""CLI command `features`: the SAEs Synapse knows and their features.

    python -m synapse_core features list --json
    python -m synapse_core features show layers.15.resid.post.sae.1234 --json
    python -m synapse_core features label layers.15.resid.post.sae.1234 "a city" --by alice --json
    python -m synapse_core features train --site layers.8.resid.post --d-sae 4608 --tokens 2000000 --json
    python -m synapse_core features train --site layers.5.mlp.in --site-out layers.5.mlp.out --json  # transcoder
    python -m synapse_core features eval layers.8.resid.post.sae --json
    python -m synapse_core features train --site layers.8.resid.post --engine ray --ray-actors 4  # harvest on Ray

`list --json` prints `saes` (name, layer, site, path, d_sae, k and the quality figures); `show`
prints `feature`, `label`, `density` and `top_contexts` (highest first: the window's `token_ids`,
`token_index`, `activation`), so the window can be re-run through the model and the SAE.
"""
from __future__ import annotations

from ..common.errors import BadInput
from . import common as cli
from .promptsets import add_engine_args, engine_of

QUALITY_KEYS = ("l0", "dead_frac", "dense_frac", "fve", "fve_trimmed", "loss_recovered", "ce_increase")


def _args(p):
    sub = p.add_subparsers(dest="features_command", required=True, metavar="{list,show,label,train,eval}")
    ls = sub.add_parser("list", help="the SAEs found (shipped and under $SYNAPSE_HOME/features)")
    ls.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    show = sub.add_parser("show", help="one feature: label, density, top contexts, tokens, co-occurring features")
    show.add_argument("feature", help="e.g. layers.15.resid.post.sae.1234")
    show.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    lab = sub.add_parser("label", help="give a feature a label (stored with who and when)")
    cli.add_model_args(lab)
    lab.add_argument("feature")
    lab.add_argument("text", nargs="?", default=None)
    lab.add_argument("--by", default=None, help="who gives the label")
    lab.add_argument("--llm", action="store_true",
                     help="ask the OpenAI-compatible endpoint at $SYNAPSE_LLM_URL for the label (by llm:MODEL)")
    tr = sub.add_parser("train", help="train a Top-K SAE on one site of the model")
    cli.add_model_args(tr)
    tr.add_argument("--site", required=True, help="layers.L.SITE, SITE one of resid.post, attn.out, mlp.out, mlp.in")
    tr.add_argument("--site-out", default=None,
                    help="train a transcoder reconstructing this site instead, e.g. layers.5.mlp.out for --site "
                         "layers.5.mlp.in (the MLP it stands in for)")
    tr.add_argument("--d-sae", type=int, default=4608)
    tr.add_argument("--k", type=int, default=32)
    tr.add_argument("--tokens", type=int, default=2_000_000, help="tokens seen in training")
    tr.add_argument("--contexts", type=int, default=1000, help="training contexts harvested")
    tr.add_argument("--ctx-len", type=int, default=128)
    tr.add_argument("--batch-size", type=int, default=1024, help="tokens per step")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", default=None, help="the SAE folder (default $SYNAPSE_HOME/features/SITE.sae)")
    add_engine_args(tr, "the harvest's forward passes")
    ev = sub.add_parser("eval", help="quality of an SAE on held-out text, and its feature statistics")
    cli.add_model_args(ev)
    ev.add_argument("sae", help="an SAE name, e.g. layers.15.resid.post.sae")
    ev.add_argument("--contexts", type=int, default=200, help="held-out contexts")
    ev.add_argument("--ctx-len", type=int, default=128)
    ev.add_argument("--ce-contexts", type=int, default=16, help="contexts for the loss figures")
    add_engine_args(ev, "the harvest's forward passes")


def _quality_text(q: dict) -> str:
    return ", ".join(f"{k} {q[k]:.4g}" for k in QUALITY_KEYS if isinstance(q.get(k), (int, float))) or "not evaluated"


def _list(args):
    from ..features.catalog import list_saes

    saes = [s.to_json() for s in list_saes()]
    payload = {"saes": [{**s, **{k: s["quality"].get(k) for k in QUALITY_KEYS}} for s in saes]}
    lines = [f"{s['name']:<28} d_sae {s['d_sae']:<6} k {s['k']:<3} {_quality_text(s['quality'])}\n    {s['path']}"
             for s in saes] or ["no SAEs found (run `make features` or `features train`)"]
    cli.emit(args, payload, "\n".join(lines))


def _show(args):
    from ..features.catalog import show_feature

    f = show_feature(args.feature)
    payload = f.to_json()
    lines = [f"{f.name}: {f.label}" + (f" (by {f.label_by}, {f.label_at})" if f.label_by else ""),
             f"density {f.density:.5f}, max activation {f.max_activation:.3f}, mean {f.mean_activation:.3f}",
             "top contexts (activation, context index, token position):"]
    lines += [f"  {c.activation:8.3f}  pos {c.token_index}" for c in f.top_contexts]
    lines.append("co-occurring: " + ", ".join(f"{n} ({j:.2f})" for n, j in f.cooccurring[:5]))
    cli.emit(args, payload, "\n".join(lines))


def _label(args):
    from ..features.catalog import find_sae, parse_feature
    from ..features.labels import set_label

    cli.check_text(args)
    sae, index = parse_feature(args.feature)
    info = find_sae(sae)
    if not 0 <= index < info.d_sae:
        raise BadInput(f"feature {index} does not exist: {sae} has features 0-{info.d_sae - 1}")
    text, by = args.text, args.by
    if args.llm:
        from ..features.catalog import show_feature
        from ..features.llmlabel import config_from_env, llm_label

        cfg = config_from_env()
        if cfg is None:
            raise BadInput("no label endpoint is configured: set SYNAPSE_LLM_URL (e.g. http://localhost:11434/v1)")
        if text:
            raise BadInput("give either a label text or --llm, not both")
        text = llm_label(show_feature(f"{info.name}.{index}"), cli.load(args).tokenizer.decode, cfg)
        by = by or f"llm:{cfg.model}"
    elif text is None:
        raise BadInput("give the label's text (or --llm)")
    lab = set_label(info.name, index, text, by or "")
    payload = {"feature": index, "name": f"{info.name}.{index}", "label": lab.text, "by": lab.by, "at": lab.at}
    cli.emit(args, payload, f"{payload['name']}: {lab.text!r} (by {lab.by}, {lab.at})")


def _log(args):
    import sys

    return lambda msg: print(msg, file=sys.stderr) if not args.json else None


def _progress_bar(args, width: int = 30):
    """A progress bar per stage (harvest, train) on stderr, redrawn in place on a terminal and
    printed every tenth otherwise; none with --json."""
    import sys

    if args.json:
        return None
    tty, shown = sys.stderr.isatty(), {}

    def progress(stage: str, done: int, total: int) -> None:
        filled = width * done // max(total, 1)
        line = (f"{stage:<7} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                f"{'contexts' if stage == 'harvest' else 'steps'}")
        if tty:
            print("\r" + line, end="\n" if done >= total else "", file=sys.stderr, flush=True)
        elif done >= total or shown.get(stage) != 10 * done // max(total, 1):
            shown[stage] = 10 * done // max(total, 1)
            print(line, file=sys.stderr)

    return progress


def _mapper(handle, args):
    """Where a harvest's batches run: --engine / SYNAPSE_ENGINE (local, or Ray actors)."""
    from ..jobs.engine import mapper

    return mapper(handle, engine_of(args))


def _train(args):
    from ..features.train import TrainConfig
    from ..features.workflow import RunConfig, site_pair, train_site

    for flag in ("d_sae", "k", "tokens", "contexts", "batch_size"):
        if getattr(args, flag) < 1:
            raise BadInput(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be at least 1")
    if args.k > args.d_sae:
        raise BadInput(f"--k {args.k} is larger than --d-sae {args.d_sae}")
    handle = cli.load(args)
    site_pair(handle, args.site, args.site_out)
    tcfg = TrainConfig(d_sae=args.d_sae, k=args.k, n_tokens=args.tokens, batch_size=args.batch_size, seed=args.seed,
                       scale_tokens=min(20_000, args.contexts * (args.ctx_len - 1)))
    run = RunConfig(contexts=args.contexts, ctx_len=args.ctx_len, seed=args.seed)
    folder, res = train_site(handle, args.site, tcfg, run, args.out, site_out=args.site_out,
                             progress=_progress_bar(args), mapper=_mapper(handle, args))
    payload = {"path": str(folder), "steps": res.steps_done, "seconds": res.seconds,
               "tokens_per_s": res.tokens_per_s, "metrics": res.last_metrics}
    cli.emit(args, payload, f"trained {folder} in {res.seconds:.0f} s ({res.tokens_per_s:.0f} tokens/s)")


def _eval(args):
    from ..features.workflow import RunConfig, evaluate_sae

    if args.contexts < 1 or args.ce_contexts < 1:
        raise BadInput("--contexts and --ce-contexts must be at least 1")
    handle = cli.load(args)
    q = evaluate_sae(handle, args.sae, RunConfig(contexts=args.contexts, ctx_len=args.ctx_len,
                                                 ce_contexts=min(args.ce_contexts, args.contexts)), log=_log(args),
                     mapper=_mapper(handle, args))
    cli.emit(args, {"sae": args.sae, "quality": q.to_json()}, f"{args.sae}: {_quality_text(q.to_json())}")


_RUN = {"list": _list, "show": _show, "label": _label, "train": _train, "eval": _eval}


def _features(args):
    _RUN[args.features_command](args)


COMMANDS = [("features", "sparse-autoencoder features: list, show, label, train, eval", _args, _features)]
