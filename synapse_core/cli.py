"""`python -m synapse_core COMMAND ... [--model SPEC] [--json]`.

With --json a command prints one JSON object on stdout. Bad input exits with status 2 and one
line on stderr. Commands register themselves in COMMANDS: (name, help, add_arguments, run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from .errors import BadInput, SynapseError


class CliError(SynapseError):
    """Bad command-line input: exit 2."""


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="bundled (default), a folder, a .gguf file or a hub id")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    parser.add_argument("--dtype", default=None, help="auto (default), float32, bfloat16, float16")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_mask_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mask", default="", help="heads masked for this run: L.H,L.H,...")
    parser.add_argument("--mask-level", default="projection", choices=("projection", "attention", "both"))
    parser.add_argument("--no-masks", action="store_true", help="ignore the stored quarantine list")


def load(args):
    from .loading import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def run_masks(args, handle) -> list:
    """Masks for this run: --mask heads, plus the stored quarantine list unless --no-masks."""
    from .spec import HeadMask, normalize_masks, parse_heads

    masks = [HeadMask(h.layer, h.head, args.mask_level) for h in parse_heads(args.mask)]
    if not args.no_masks:
        from .maskstore import MaskStore

        masks.extend(MaskStore().masks(handle))  # the quarantine list in force for this model
    return list(normalize_masks(masks, handle.arch))


def emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload) if args.json else text)


# ---- commands -------------------------------------------------------------------------------


def _info_args(p):
    add_model_args(p)


def _info(args):
    handle = load(args)
    arch = handle.arch
    payload = {
        "model": handle.name,
        "family": arch.family,
        "n_layers": arch.n_layers,
        "n_heads": arch.n_heads,
        "n_kv_heads": arch.n_kv_heads,
        "d_head": arch.d_head,
        "d_model": arch.d_model,
        "device": str(handle.device),
        "dtype": str(handle.dtype).replace("torch.", ""),
        "fingerprint": handle.fingerprint,
        "source": handle.source,
    }
    emit(args, payload, "\n".join(f"{k}: {v}" for k, v in payload.items()))


def _trace_args(p):
    add_model_args(p)
    add_mask_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-attention", action="store_true", help="skip attention capture")
    p.add_argument("--influence", type=int, default=None, metavar="N",
                   help="also attribute generated token N to the source tokens (gradient x input)")


def _trace(args):
    from .generation import Sampling
    from .trace import trace

    if not args.prompt.strip():
        raise BadInput("the prompt is empty: give --prompt some text")
    handle = load(args)
    masks = run_masks(args, handle)
    result = trace(handle, args.prompt, args.max_new_tokens, masks=masks,
                   sampling=Sampling(args.temperature, args.top_k, args.seed),
                   capture_attention=not args.no_attention)
    payload = result.to_json()
    if args.influence is not None:
        from .influence import token_influence

        inf = token_influence(handle, result.prompt_ids, result.generated_ids, args.influence, masks)
        payload["influence"] = {
            "output_index": inf.output_index,
            "output_token": inf.output_token,
            "method": inf.method,
            "tokens": list(inf.source_tokens),
            "scores": [round(float(s), 6) for s in inf.scores],
        }
    top = ", ".join(f"{h.layer}.{h.head} ({h.score:.2f})" for h in result.top_heads[:5])
    emit(args, payload, f"{args.prompt}\u2192{result.generated_text!r}\ntop heads: {top}")


COMMANDS: list[tuple[str, str, Callable, Callable]] = [
    ("info", "describe the model", _info_args, _info),
    ("trace", "generate with every head traced", _trace_args, _trace),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m synapse_core", description="Synapse: look inside a language model.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser




def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return int(exc.code or 0)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        args.run(args)
    except (BadInput, SynapseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# ---- governance: quarantine, om, webhook (defined in governance_cli.py) ----------------------
from .governance_cli import COMMANDS as _GOVERNANCE_COMMANDS  # noqa: E402

COMMANDS.extend(_GOVERNANCE_COMMANDS)

# ---- ablate, sweep (defined in cli_ablate.py) ------------------------------------------------
from .cli_ablate import COMMANDS as _ABLATE_COMMANDS  # noqa: E402

COMMANDS.extend(_ABLATE_COMMANDS)

# ---- discover (defined in cli_discover.py) ---------------------------------------------------
from .cli_discover import COMMANDS as _DISCOVER_COMMANDS  # noqa: E402

COMMANDS.extend(_DISCOVER_COMMANDS)
