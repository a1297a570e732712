"""The reference prompt set: the prompts whose mean activations a mean ablation substitutes.

Shared by the ops (mean ablation), prompt sets and the experiment records, so it sits at the bottom
of the interventions layer. The shipped set is `data/reference_prompts.txt`.
"""
from __future__ import annotations

from pathlib import Path

from ..common.errors import BadInput

REFERENCE_FILE = Path(__file__).parent / "data" / "reference_prompts.txt"


def parse_reference_prompts(text: str) -> tuple[str, ...]:
    """One reference prompt per line; blank lines and # comments skipped."""
    prompts = tuple(line.strip() for line in (text or "").splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise BadInput("the reference prompt set is empty: give one prompt per line")
    return prompts


def default_reference_prompts() -> tuple[str, ...]:
    """The reference set shipped with Synapse (synapse_core/interventions/data/reference_prompts.txt)."""
    return parse_reference_prompts(REFERENCE_FILE.read_text(encoding="utf-8"))
