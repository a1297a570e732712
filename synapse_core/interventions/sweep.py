"""Causal maps: one operation swept over every head, or over every layer's attention output, MLP
output and residual stream, or over features of one SAE (each zeroed, its error term kept), each
scored against the clean run.

Sweeps are batched. Each forward pass carries several copies of the prompt, one row per
intervention; a zero-ablated head is switched off by one attn.z function per layer that multiplies
by a (batch, pos, head) mask, any other operation by a function that edits its own row. Rows are
ordered by layer, and below its layer a row equals the clean run, so a pass starts with one row
that carries the clean run, and the rows of each layer join as copies of it at the residual stream
just below that layer (a resid.post site function that returns the stream with rows appended;
everything the layers take besides the stream has batch 1 and broadcasts). Each layer thus runs
once per intervention above it and once for the clean row, never for rows it cannot change: about
half the layer work of one forward pass per head, in a few large batches. It is exact: each row
sees what its own forward pass would, up to float rounding of the batched matmuls.

The clean value is row 0 of the same pass, not a separate forward pass: every effect is a row minus
the clean row computed beside it by the same kernels, so an intervention that changes nothing reads
exactly 0, in bfloat16 on a GPU too (a separate batch-1 pass rounds differently).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ..arch.spec import HeadMask, Intervention, normalize_masks
from ..common.errors import BadInput
from ..features.catalog import find_sae
from ..features.intervene import feature_intervention, sae_for
from ..hooks.dispatch import SiteFn
from ..hooks.masking import mask_fns, merge_fns
from ..model.generation import Progress
from ..model.loading import ModelHandle
from ..model.tokens import encode_prompt, token_strings
from .metrics import (
    Metrics,
    Target,
    batch_scores,
    check_metric,
    clean_value,
    default_metric,
    next_token_metrics,
    resolve_target,
)
from .ops import OpSettings, Prepared, capture, forward_last, hook_key, prepare, resolve_positions

LAYER_SITES = ("attn", "mlp", "resid")
BATCH_ROWS = 54  # interventions per forward pass: 6 layers of SmolLM2 heads (fastest in benchmarks/head_sweep.py)
TOKEN_BUDGET = 8192  # rows x tokens per forward pass, to bound memory on long prompts


@dataclass(frozen=True, eq=False)
class SweepResult:
    """The effect of one operation on each head (kind "heads") or each layer's components ("layers")."""

    model: str
    fingerprint: str
    prompt: str
    prompt_tokens: tuple[str, ...]
    target: Target
    kind: str  # "heads": arrays are (layer, head); "layers": (site, layer), rows in `sites` order;
    # "features": (1, feature), columns in `features` order
    sites: tuple[str, ...]  # ("attn.head",) for heads; the swept sites for layers, e.g. ("attn", "mlp", "resid");
    # (the SAE's name,) for features
    op: str  # zero | mean | patch | steer
    positions: str | tuple[int, ...]
    metric: str  # log_prob | target_prob | logit_diff | kl
    clean: float  # the clean run's value of the metric (0 for kl): row 0 of the first batched pass
    clean_metrics: Metrics  # the clean run (row 0 of the first batched pass)
    values: np.ndarray  # the metric with each intervention, float32
    effects: np.ndarray  # values - the clean row of the same batched pass (equal to values - clean up to rounding)
    kl: np.ndarray  # KL(clean || intervened), nats
    top1_changed: np.ndarray  # bool: the most likely next token changed
    masks: tuple[HeadMask, ...]  # masked in every run, the clean one included
    settings: OpSettings
    seconds: float  # wall time of the sweep, clean run and preparation included
    forward_passes: int  # batched passes over the interventions (the clean run not counted)
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    features: tuple[int, ...] = ()  # kind "features": the feature index of each column

    def name(self, i: int, j: int) -> str:
        """The intervention name of array cell (i, j)."""
        if self.kind == "features":
            return f"{self.sites[0]}.{self.features[j]}"
        if self.kind == "heads":
            return f"layers.{i}.attn.head.{j}"
        return f"layers.{j}.{self.sites[i]}"

    def effect_rows(self) -> list[dict]:
        """One dict per cell: {"layer", "head", "effect"} for heads; {"layer", "site", "effect"} for layers;
        {"feature", "effect"} for features."""
        rows = []
        for i, j in np.ndindex(self.effects.shape):
            cell = ({"feature": self.features[j]} if self.kind == "features" else {"layer": i, "head": j}
                    if self.kind == "heads" else {"layer": j, "site": self.sites[i]})
            rows.append(dict(cell, name=self.name(i, j), effect=float(self.effects[i, j]),
                             value=float(self.values[i, j]), kl=float(self.kl[i, j]),
                             top1_changed=bool(self.top1_changed[i, j])))
        return rows

    def to_json(self) -> dict:
        return {
            "model": self.model, "fingerprint": self.fingerprint, "prompt": self.prompt,
            "prompt_tokens": list(self.prompt_tokens), "target": asdict(self.target), "kind": self.kind,
            "sites": list(self.sites), "op": self.op,
            "positions": self.positions if isinstance(self.positions, str) else list(self.positions),
            "metric": self.metric, "clean": self.clean, "clean_metrics": asdict(self.clean_metrics),
            "effects": self.effect_rows(), "masks": [asdict(m) for m in self.masks],
            "settings": asdict(self.settings), "seconds": self.seconds, "forward_passes": self.forward_passes,
            "notes": list(self.notes), "warnings": list(self.warnings), "features": list(self.features),
        }


def _grow(g: int) -> SiteFn:
    def fn(x):  # (rows, pos, d_model) -> (rows + g, pos, d_model): g new rows, copies of row 0 (clean)
        return torch.cat([x, x[:1].expand(g, *x.shape[1:])])

    return fn


def _per_row(items: list[tuple[int, SiteFn]]) -> SiteFn:
    def fn(x):
        out = x.clone()
        for row, f in items:
            out[row:row + 1] = f(x[row:row + 1])
        return out

    return fn


def _chunk_table(handle: ModelHandle, prepared: Prepared, rows: list[int], n_pos: int, reuse_prefix: bool):
    """Site functions for one forward pass over the interventions `rows` (sorted by layer).

    Batch row 0 carries the clean run. With reuse_prefix the rows of each layer join as copies of it
    at the residual stream just below that layer; without, every row runs from the input.
    Returns (rows at the input, row of the first intervention, site functions).
    """
    arch = handle.arch
    layers = [prepared.interventions[i].layer for i in rows]
    table: dict = defaultdict(list)
    offset = 1
    if reuse_prefix:
        n_input = 1 + layers.count(0)
        for layer in sorted(set(layers) - {0}):
            table[(layer - 1, "resid.post")].append(_grow(layers.count(layer)))
    else:
        n_input = 1 + len(rows)

    def batch_at(layer: int) -> int:  # rows in the batch from this layer on
        return offset + sum(1 for l in layers if l <= layer) if reuse_prefix else n_input

    head_masks: dict[int, torch.Tensor] = {}
    generic: dict = defaultdict(list)
    for r, i in enumerate(rows):
        iv = prepared.interventions[i]
        if iv.op == "zero" and iv.site == "attn.head":
            if iv.layer not in head_masks:
                head_masks[iv.layer] = torch.ones(batch_at(iv.layer), n_pos, arch.n_heads, 1, dtype=handle.dtype,
                                                  device=handle.device)
            head_masks[iv.layer][offset + r, resolve_positions(iv.positions, n_pos), iv.head] = 0
        else:
            generic[hook_key(iv)].append((offset + r, prepared.fns[i]))
    for layer, m in head_masks.items():
        # z (batch, pos, head, d_head), m (batch, pos, head, 1); m moves to the layer's device (a device map)
        table[(layer, "attn.z")].append(lambda z, m=m: z * m.to(z.device))
    for key, items in generic.items():
        table[key].append(_per_row(items))
    return n_input, offset, dict(table)


def with_clean(logits: torch.Tensor, offset: int, target: Target) -> dict[str, torch.Tensor]:
    """batch_scores of rows offset.. of one pass against its row 0 (the clean run), and that row's own
    values beside each row as "clean_<metric>". logits (batch, d_vocab)."""
    clean = logits[0]
    out = batch_scores(logits[offset:], target, clean)
    n = logits.shape[0] - offset
    for name, value in batch_scores(logits[:1], target, clean).items():
        if name not in ("kl", "top1_changed"):
            out["clean_" + name] = value.expand(n)
    return out


def batched_scores(handle: ModelHandle, ids: torch.Tensor, prepared: Prepared, target: Target, masks=(),
                   batch_rows: int = BATCH_ROWS, progress: Progress | None = None,
                   reuse_prefix: bool = True) -> tuple[dict[str, torch.Tensor], int]:
    """Scores of every prepared intervention, one batch row each (see the module docstring).

    ids (1, pos). Each pass carries the clean run in its row 0; kl and top1_changed compare each
    row with that row, and "clean_<metric>" (n,) holds its value beside each row, so an effect is
    scores[m] - scores["clean_" + m]. "clean_logits" (d_vocab,) is row 0 of the first pass.
    reuse_prefix=False runs every row from the input (plain batching, for comparison).
    Returns (name -> (n,) in the order of prepared.interventions, number of forward passes).
    """
    n_pos = ids.shape[1]
    rows_per_pass = max(1, min(batch_rows, TOKEN_BUDGET // n_pos))
    order = sorted(range(len(prepared.interventions)), key=lambda i: prepared.interventions[i].layer)
    chunks = [order[k:k + rows_per_pass] for k in range(0, len(order), rows_per_pass)]
    base = mask_fns(tuple(masks))
    parts, clean_logits = [], None
    for done, rows in enumerate(chunks):
        n_input, offset, table = _chunk_table(handle, prepared, rows, n_pos, reuse_prefix)
        logits = forward_last(handle, ids.expand(n_input, -1), merge_fns(base, table))
        assert logits.shape[0] == offset + len(rows), f"batch grew to {logits.shape[0]}, expected {offset + len(rows)}"
        parts.append(with_clean(logits, offset, target))
        clean_logits = logits[0] if clean_logits is None else clean_logits
        if progress:
            progress(done + 1, len(chunks), f"forward pass {done + 1}/{len(chunks)} ({len(rows)} interventions)")
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    merged = {k: torch.cat([p[k] for p in parts])[inverse.to(parts[0][k].device)] for k in parts[0]}
    merged["clean_logits"] = clean_logits
    return merged, len(chunks)


def one_by_one_scores(handle: ModelHandle, ids: torch.Tensor, prepared: Prepared, target: Target,
                      clean_logits: torch.Tensor, masks=(), progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """The same scores with one plain forward pass per intervention: the reference for batched_scores."""
    base = mask_fns(tuple(masks))
    parts = []
    total = len(prepared.interventions)
    for i, (key, fn) in enumerate(zip(prepared.keys, prepared.fns)):
        parts.append(batch_scores(forward_last(handle, ids, merge_fns(base, {key: [fn]})), target, clean_logits))
        if progress:
            progress(i + 1, total, prepared.interventions[i].name)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _sweep(handle, prompt, target, contrast, ivs, kind, sites, shape, op, positions, metric, masks, settings,
           batch_rows, progress) -> SweepResult:
    t0 = time.perf_counter()
    masks = normalize_masks(masks, handle.arch)
    ids, warnings = encode_prompt(handle, prompt)
    if not isinstance(target, Target):
        target = resolve_target(handle, target, contrast)
    metric = check_metric(metric or default_metric(target), target)
    prepared = prepare(handle, ids, ivs, settings, masks)
    scores, passes = batched_scores(handle, ids, prepared, target, masks, batch_rows, progress)
    clean_metrics = next_token_metrics(handle, scores["clean_logits"], target)
    values = scores[metric].reshape(shape).cpu().numpy().astype(np.float32)
    clean = clean_value(clean_metrics, metric)
    # against the clean row of each value's own pass; kl is already a difference from it
    beside = np.float32(0) if metric == "kl" else scores["clean_" + metric].reshape(shape).cpu().numpy()
    return SweepResult(
        model=handle.name,
        fingerprint=handle.fingerprint,
        prompt=prompt,
        prompt_tokens=tuple(token_strings(handle, ids[0])),
        target=target,
        kind=kind,
        sites=sites,
        op=op,
        positions=positions,
        metric=metric,
        clean=clean,
        clean_metrics=clean_metrics,
        values=values,
        effects=values - np.asarray(beside, dtype=np.float32),
        kl=scores["kl"].reshape(shape).cpu().numpy().astype(np.float32),
        top1_changed=scores["top1_changed"].reshape(shape).cpu().numpy(),
        masks=masks,
        settings=settings,
        seconds=time.perf_counter() - t0,
        forward_passes=passes,
        notes=prepared.notes,
        warnings=tuple(warnings) + target.warnings,
    )


def sweep_heads(handle: ModelHandle, prompt: str, target: str | Target, contrast: str | None = None,
                op: str = "zero", positions="all", source: str | None = None, metric: str | None = None,
                masks=(), settings: OpSettings = OpSettings(), batch_rows: int = BATCH_ROWS,
                progress: Progress | None = None) -> SweepResult:
    """Apply `op` to every head in turn; effects (layer, head) = intervened metric - clean metric.

    metric defaults to logit_diff with a contrast token, else log_prob. source is the patch source.
    >>> sweep_heads(handle, "The capital of France is", " Paris").effects.shape
    (30, 9)
    """
    arch = handle.arch
    ivs = [Intervention(layer, "attn.head", op, head, positions, source)
           for layer in range(arch.n_layers) for head in range(arch.n_heads)]
    return _sweep(handle, prompt, target, contrast, ivs, "heads", ("attn.head",), (arch.n_layers, arch.n_heads),
                  op, positions, metric, masks, settings, batch_rows, progress)


def sweep_layers(handle: ModelHandle, prompt: str, target: str | Target, contrast: str | None = None,
                 sites: tuple[str, ...] = LAYER_SITES, op: str = "zero", positions="all", source: str | None = None,
                 metric: str | None = None, masks=(), settings: OpSettings = OpSettings(),
                 batch_rows: int = BATCH_ROWS, progress: Progress | None = None) -> SweepResult:
    """Apply `op` to each site of every layer in turn; effects (site, layer), rows in `sites` order."""
    sites = tuple(sites)
    if not sites or any(s not in LAYER_SITES for s in sites):
        raise BadInput(f"layer sweep sites {list(sites)}: choose from {', '.join(LAYER_SITES)}")
    n_layers = handle.arch.n_layers
    ivs = [Intervention(layer, site, op, None, positions, source) for site in sites for layer in range(n_layers)]
    return _sweep(handle, prompt, target, contrast, ivs, "layers", sites, (len(sites), n_layers),
                  op, positions, metric, masks, settings, batch_rows, progress)


def active_features(handle: ModelHandle, prompts, sae: str, top: int = 20, masks=()) -> tuple[int, ...]:
    """The `top` features of SAE `sae` with the largest activation at any position of the prompt (or
    of any prompt of a list: a prompt set's features), position 0, the separator, left out as
    everywhere the SAEs are used; largest first; only features that fire, so fewer than `top` when
    fewer fire. Masks are on, as in the sweep."""
    if top < 1:
        raise BadInput(f"top {top}: sweep at least 1 feature")
    find_sae(sae)  # names the SAEs there are when there is no such one
    first = feature_intervention(f"{sae}.0")  # checks the SAE exists and is one the model reads back
    key = hook_key(first)
    peak = None  # (d_sae,): the largest activation of each feature so far
    for prompt in ([prompts] if isinstance(prompts, str) else list(prompts)):
        ids, _ = encode_prompt(handle, prompt)
        x = capture(handle, ids, [key], normalize_masks(masks, handle.arch))[key][1:]  # (pos - 1, d_model)
        if x.shape[0] == 0:
            continue
        with torch.no_grad():
            here = sae_for(first.feature, handle.arch.d_model).encode(x).amax(0)
        peak = here if peak is None else torch.maximum(peak, here)
    if peak is None:
        return ()
    vals, idx = peak.topk(min(top, peak.numel()))
    return tuple(int(i) for v, i in zip(vals, idx) if v > 0)


def sweep_features(handle: ModelHandle, prompt: str, target: str | Target, sae: str, features,
                   contrast: str | None = None, positions="all", metric: str | None = None, masks=(),
                   batch_rows: int = BATCH_ROWS, progress: Progress | None = None) -> SweepResult:
    """Zero each of `features` (indices of SAE `sae`, e.g. from active_features) in turn, the SAE's
    error term kept; effects (1, feature) = intervened metric - clean metric, batched like the head
    sweep (one row per feature, every row joining the clean run just below the SAE's layer).

    A feature that is not active at any of `positions` changes nothing: its effect is exactly 0.
    >>> sweep_features(handle, prompt, " Paris", "layers.15.resid.post.sae", (12, 7)).effects.shape  # doctest: +SKIP
    (1, 2)
    """
    features = tuple(int(f) for f in features)
    find_sae(sae)
    if not features:
        raise BadInput(f"no feature of {sae} to sweep: give feature indices, or pick the ones active on the prompt")
    if len(set(features)) != len(features):
        raise BadInput(f"feature list {list(features)} names a feature twice")
    ivs = [feature_intervention(f"{sae}.{f}", "zero", None, positions) for f in features]
    result = _sweep(handle, prompt, target, contrast, ivs, "features", (sae,), (1, len(features)), "zero",
                    positions, metric, masks, OpSettings(), batch_rows, progress)
    return replace(result, features=features)
