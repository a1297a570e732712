"""What every CLI command shares: the model and mask arguments, loading, and output.

Command modules (trace, ablate, discover, governance) import from here; `main` imports them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..common.errors import BadInput, SynapseError


class CliError(SynapseError):
    """Bad command-line input: exit 2."""


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="bundled (default), a folder, a .gguf file or a hub id")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    parser.add_argument("--dtype", default=None, help="auto (default), float32, bfloat16, float16")
    parser.add_argument("--device-map", default=None,
                        help="spread the layers over devices: auto, balanced or a JSON map of module -> device "
                             "(default SYNAPSE_DEVICE_MAP; none: the whole model on --device)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_mask_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mask", default="", help="heads masked for this run: L.H,L.H,...")
    parser.add_argument("--mask-level", default="projection", choices=("projection", "attention", "both"))
    parser.add_argument("--no-masks", action="store_true", help="ignore the stored quarantine list")


def check_text(args) -> None:
    """Refuse an argument that is not UTF-8 text (the shell passes raw bytes; Python keeps them as
    lone surrogates that fail deep inside the tokenizer)."""
    for name, value in vars(args).items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raw = value.encode("utf-8", "surrogateescape")
                raise CliError(f"--{name.replace('_', '-')} is not UTF-8 text: {raw[:40]!r}") from None


def load(args):
    from transformers.utils import logging as hf_logging

    from ..model.loading import load_model

    check_text(args)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=getattr(args, "device_map", None))


def run_masks(args, handle) -> list:
    """Masks for this run: --mask heads, plus the stored quarantine (heads, then features) unless --no-masks."""
    from ..arch.spec import HeadMask, normalize_masks, parse_heads

    masks = [HeadMask(h.layer, h.head, args.mask_level) for h in parse_heads(args.mask)]
    if not args.no_masks:
        from ..governance.featurestore import in_force

        masks.extend(in_force(handle))  # the quarantine in force for this model
    return list(normalize_masks(masks, handle.arch))


def emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload) if args.json else text)


def read_prompt_file(path: str, what: str) -> list:
    """The cases of a prompt-set file: `prompt | target | contrast` lines, or a .csv with columns prompt,
    target[, contrast]. `what` names the file in errors ("prompt set", "prompts file")."""
    from ..interventions.promptset import parse_prompt_csv, parse_prompt_lines

    file = Path(path).expanduser()
    if not file.is_file():
        raise BadInput(f"{what} {file} does not exist")
    try:
        if file.suffix.lower() == ".csv":
            return parse_prompt_csv(file.read_bytes())
        return parse_prompt_lines(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInput(f"{what} {file} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise BadInput(f"cannot read {what} {file}: {exc.strerror or exc}") from None
