"""`python -m synapse_core COMMAND ... [--model SPEC] [--json]`.

With --json a command prints one JSON object on stdout. Bad input exits with status 2 and one
line on stderr. Each command module lists its commands in COMMANDS as (name, help, add_arguments,
run); this module only gathers them into one parser.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..common.errors import SynapseError
from .ablate import COMMANDS as ABLATE_COMMANDS
from .discover import COMMANDS as DISCOVER_COMMANDS
from .features import COMMANDS as FEATURES_COMMANDS
from .governance import COMMANDS as GOVERNANCE_COMMANDS
from .graph import COMMANDS as GRAPH_COMMANDS
from .trace import COMMANDS as TRACE_COMMANDS

COMMANDS = [*TRACE_COMMANDS, *GOVERNANCE_COMMANDS, *ABLATE_COMMANDS, *DISCOVER_COMMANDS, *GRAPH_COMMANDS,
            *FEATURES_COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synapse", description="Synapse: look inside a language model.")
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
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when a command imports transformers
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        args.run(args)
    except SynapseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
