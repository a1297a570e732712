"""`synapse quarantine cost HEADS_OR_FEATURES ...`: what quarantining heads or SAE features would cost,
before it is done.

    python -m synapse_core quarantine cost 0.6 23.5 21.3 --json
    python -m synapse_core quarantine cost 0.6 layers.15.resid.post.sae.1234 --json
    python -m synapse_core quarantine cost 0.6,23.5 --text notes.txt --window 128 --prompt-set mine.txt

Prints perplexity_before, perplexity_after, tokens, capabilities (one entry a group), flipped, seconds
and the report's experiment hash. The text is the corpus's held-out split unless --text is given.
"""
from __future__ import annotations

from pathlib import Path

from ..common.errors import BadInput, StoreError
from . import common as cli
from .promptsets import add_engine_args, engine_of, stage_printer


def add_parser(sub) -> None:
    p = sub.add_parser("cost", help="what quarantining heads or features would cost: perplexity, capability prompts, "
                                    "target")
    p.add_argument("heads", nargs="+", metavar="L.H|FEATURE",
                   help="the heads (L.H) and SAE features (layers.15.resid.post.sae.1234) to quarantine (spaces or commas)")
    p.add_argument("--level", default="projection", choices=("projection", "attention", "both"))
    p.add_argument("--text", default=None, metavar="FILE", help="score this UTF-8 text instead of the corpus")
    p.add_argument("--tokens", type=int, default=None, help="corpus tokens scored (default 20000)")
    p.add_argument("--window", type=int, default=None, help="tokens a context (default 256)")
    p.add_argument("--prompt-set", default=None, metavar="FILE",
                   help="capability prompts: [group] headers and `prompt | expected` lines")
    p.add_argument("--prompt", default=None, help="the target behaviour's prompt")
    p.add_argument("--target", default=None, help="the unwanted token, e.g. \" Sydney\"")
    p.add_argument("--contrast", default=None, help="the token it is measured against")
    p.add_argument("--no-masks", action="store_true", help="measure against the raw model, not the quarantine in force")
    add_engine_args(p, "the report's forward passes")
    p.add_argument("--progress", action="store_true", help="print each stage's progress on stderr")


def _prompt_set(path: str | None):
    from ..analysis.capabilities import default_capabilities, parse_capabilities

    if path is None:
        return default_capabilities()
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read the prompt set {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"the prompt set {path!r} is not UTF-8 text (byte {exc.start})") from None
    return parse_capabilities(text, Path(path).name)


def run(args) -> None:
    from ..analysis.cost import cost_config
    from ..analysis.perplexity import DEFAULT_TOKENS, DEFAULT_WINDOW, check_window, corpus_docs, file_docs
    from ..arch.spec import mask_name, parse_heads
    from ..experiments.costs import run_cost
    from ..governance.featurestore import in_force
    from ..interventions.featureops import is_feature_name
    from ..interventions.promptset import PromptCase

    names = [n for arg in args.heads for n in arg.replace(",", " ").split()]
    features = [n for n in names if is_feature_name(n)]
    heads = [*parse_heads(" ".join(n for n in names if n not in features)), *features]
    if not heads:
        raise BadInput("no heads or features given: name at least one, e.g. 0.6 or layers.15.resid.post.sae.1234")
    if (args.prompt is None) != (args.target is None):
        raise BadInput("the target behaviour needs both --prompt and --target")
    window = check_window(DEFAULT_WINDOW if args.window is None else args.window)
    caps = _prompt_set(args.prompt_set)
    handle = cli.load(args)
    masks = [] if args.no_masks else in_force(handle)
    notes = []
    if args.text is not None:
        text = file_docs(handle, args.text)
    else:
        try:
            text = corpus_docs(handle, DEFAULT_TOKENS if args.tokens is None else args.tokens, window)
        except StoreError as exc:  # the corpus is not installed: the rest of the report still stands
            text = None
            notes.append(f"general text skipped: {exc}")
    targets = [PromptCase(args.prompt, args.target, args.contrast or None)] if args.prompt else []
    config = cost_config(handle, heads, masks, text, window, caps, targets, level=args.level)
    exp = run_cost(handle, config, text, progress=stage_printer(args), engine=engine_of(args))
    r = exp.result
    payload = dict(r.to_json(), experiment=exp.hash, from_cache=exp.from_cache,
                   perplexity_change=None if r.text is None else r.text.perplexity_change,
                   notes=[*notes, *r.notes, *exp.notes])
    heads = ", ".join(mask_name(m) for m in r.heads)
    stored = ", from the store" if exp.from_cache else ""
    lines = [f"cost of quarantining {heads} (experiment {exp.hash}{stored}, {r.seconds:.1f} s)", r.verdict()]
    lines += [f"  {g.group}: accuracy {g.accuracy_before:.0%} -> {g.accuracy_after:.0%}, agreement {g.agreement:.0%}, "
              f"KL mean {g.mean_kl:.4f} worst {g.worst_kl:.4f}, {len(g.flipped)} flipped" for g in r.groups]
    cli.emit(args, payload, "\n".join([*lines, *payload["notes"]]))
