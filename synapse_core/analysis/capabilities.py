"""Capability prompts: short prompts in named groups, each with its expected answer, scored on the
next token with and without a quarantine. The shipped set is `data/capabilities.txt`.

Prompts are batched: sorted by length, right-padded (under causal attention padding after the last
token never changes it) and read at each prompt's own last position, many prompts a forward pass.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.errors import BadInput
from ..hooks.dispatch import hooks
from ..hooks.masking import mask_fns
from ..model.generation import Progress
from ..model.loading import ModelHandle
from ..model.mapper import Mapper, local_mapper
from ..model.placement import spread
from .perplexity import LOGIT_BUDGET

CAPABILITY_FILE = Path(__file__).parent / "data" / "capabilities.txt"
DEFAULT_GROUP = "prompts"  # the group of lines before any [group] header


@dataclass(frozen=True)
class Capability:
    """One capability prompt."""

    group: str  # e.g. "facts and capitals"
    prompt: str
    expected: str  # the right answer, scored on its first token (" Paris")


def _field(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def parse_capabilities(text: str, name: str = "the prompt set") -> tuple[Capability, ...]:
    """Capabilities from `[group]` headers and `prompt | expected` lines (see data/capabilities.txt).

    >>> parse_capabilities('[capitals]\\nThe capital of France is | " Paris"')[0].expected
    ' Paris'
    """
    out, group = [], DEFAULT_GROUP
    for number, line in enumerate((text or "").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            group = stripped[1:-1].strip()
            if not group:
                raise BadInput(f"{name}, line {number}: an empty group name []")
            continue
        parts = line.split("|")
        if len(parts) != 2 or not _field(parts[1]):
            raise BadInput(f"{name}, line {number} ({stripped[:60]!r}) has no expected answer: write "
                           "`prompt | expected answer` (quote the answer to keep its leading space: \" Paris\")")
        prompt = _field(parts[0]).replace("\\n", "\n")
        if not prompt.strip():
            raise BadInput(f"{name}, line {number} ({stripped[:60]!r}) has no prompt before the |")
        out.append(Capability(group, prompt, _field(parts[1])))
    if not out:
        raise BadInput(f"{name} has no prompts: write `prompt | expected answer` lines under [group] headers")
    return tuple(out)


def default_capabilities() -> tuple[Capability, ...]:
    """The shipped set (synapse_core/analysis/data/capabilities.txt): 120 prompts in 6 groups."""
    return parse_capabilities(CAPABILITY_FILE.read_text(encoding="utf-8"), CAPABILITY_FILE.name)


def expected_ids(handle: ModelHandle, caps) -> list[int]:
    """The first token of each expected answer."""
    out = []
    for cap in caps:
        ids = handle.tokenizer(cap.expected, add_special_tokens=False).input_ids
        if not ids:
            raise BadInput(f"the expected answer {cap.expected!r} of {cap.prompt!r} encodes to no token")
        out.append(int(ids[0]))
    return out


def logit_batches(handle: ModelHandle, prompts) -> tuple[list[list[int]], list[list[int]]]:
    """(token ids of each prompt, the prompts' indices grouped into forward passes): prompts of similar
    length share a pass, as many as LOGIT_BUDGET allows."""
    encoded = [handle.tokenizer(p).input_ids for p in prompts]
    for p, ids in zip(prompts, encoded):
        if not ids:
            raise BadInput(f"prompt {p!r} encodes to no token")
    vocab = handle.model.get_output_embeddings().weight.shape[0]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batches, current = [], []
    for i in order:
        lengths = {len(encoded[k]) for k in current} | {len(encoded[i])}
        if current and (len(current) + 1) * len(lengths) * vocab > LOGIT_BUDGET:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return encoded, batches


def _pass_logits(handle: ModelHandle, rows) -> torch.Tensor:
    """One forward pass over `rows` (token-id sequences, right-padded together): each row's
    last-position logits (row, d_vocab), float32 on the CPU. The caller holds the masks' hooks."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    last = sorted({len(r) - 1 for r in rows})
    # spread over devices (a device map) an index tensor would land on another device than the
    # hidden states: keep every position there (0) and pick the columns after
    every = spread(handle.model)
    keep = 0 if every else torch.tensor(last, device=handle.device)
    logits = handle.model(input_ids=ids.to(handle.device), use_cache=False, logits_to_keep=keep).logits
    column = {pos: pos if every else c for c, pos in enumerate(last)}
    cols = torch.tensor([column[len(r) - 1] for r in rows], device=logits.device)
    return logits[torch.arange(len(rows), device=logits.device), cols].float().cpu()


def logits_shard(handle: ModelHandle, cases, progress: Progress | None = None, *, masks) -> list:
    """A shard function (model.mapper) over forward passes: each case is one pass's prompts as token
    ids (a group of logit_batches); its result is their next-token logits (prompt, d_vocab), float32
    on the CPU, `masks` in force."""
    out = []
    with torch.inference_mode(), hooks(handle.model, handle.arch, mask_fns(tuple(masks))):
        for done, rows in enumerate(cases):
            out.append(_pass_logits(handle, rows))
            if progress:
                progress(done + 1, len(cases), f"forward pass {done + 1}/{len(cases)}")
    return out


def next_token_logits(handle: ModelHandle, prompts, masks=(), progress: Callable[[int, int], None] | None = None,
                      mapper: Mapper | None = None) -> torch.Tensor:
    """Last-position logits (n_prompts, d_vocab), float32 on the CPU, of every prompt with `masks` in
    force; prompts of similar length share a forward pass (logit_batches). mapper: where the passes
    run (model.mapper: here, or on the job engine's actors; a pass holds the same prompts wherever it
    runs, so the logits are the same). progress(done, total) in passes, as the mapper reports them."""
    encoded, batches = logit_batches(handle, prompts)
    cases = tuple(tuple(tuple(encoded[k]) for k in batch) for batch in batches)
    step = (lambda done, total, message="": progress(done, total)) if progress else None
    rows = (mapper or local_mapper(handle))(logits_shard, cases, {"masks": tuple(masks)}, step)
    out = torch.empty(len(encoded), handle.model.get_output_embeddings().weight.shape[0])
    for batch, logits in zip(batches, rows):
        out[batch] = logits
    return out
