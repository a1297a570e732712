"""Interventions as hook-site functions: zero, mean, patch and steer a head, an attention block's
output, an MLP's output or the residual stream, at all positions, the last, or a chosen list.

An Intervention (spec.py) names what is changed; OpSettings carries what an operation needs beyond
the name (reference prompts, steering scale and direction). `prepare` turns both into site
functions for hooks(), running the model where an operation needs activations from other prompts
(the patch source, the reference set, the two steering prompts). Masks are on in those runs too.

Sites (hooks.py): attn.head -> attn.z (batch, pos, head, d_head); attn -> attn.out, mlp -> mlp.out,
resid -> resid.post, all (batch, pos, d_model).
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..arch.spec import HeadMask, Intervention, normalize_masks
from ..common.errors import BadInput
from ..hooks.dispatch import SiteFn, hooks
from ..hooks.masking import mask_fns, merge_fns
from ..model.loading import ModelHandle
from ..model.placement import spread
from ..model.tokens import encode_prompt
from .featureops import feature_site_fn
from .reference import default_reference_prompts

HOOK_SITE = {"attn.head": "attn.z", "attn": "attn.out", "mlp": "mlp.out", "resid": "resid.post"}
STEER_SITES = ("attn", "mlp", "resid")
HookKey = tuple[int, str]  # (layer, hook site)


@dataclass(frozen=True)
class OpSettings:
    """What an operation needs beyond its Intervention; part of an experiment's config."""

    reference: tuple[str, ...] = ()  # mean: reference prompts; empty = the shipped default set
    scale: float = 1.0  # steer: multiplies the direction
    steer_prompts: tuple[str, str] | None = None  # steer: (plus, minus); direction = act(plus) - act(minus), last position
    direction: tuple[float, ...] | None = None  # steer: a saved vector (d_model,), used instead of steer_prompts


@dataclass(frozen=True)
class Prepared:
    """Site functions for a list of interventions, one per intervention, ready for hooks()."""

    interventions: tuple[Intervention, ...]
    keys: tuple[HookKey, ...]  # the hook site of each intervention
    fns: tuple[SiteFn, ...]  # each acts on every batch row alike
    notes: tuple[str, ...]  # how the operations were carried out (alignment, kind of mean, ...)
    masks: tuple[HeadMask, ...]  # masks in force in the runs that gathered activations

    def table(self) -> dict[HookKey, list[SiteFn]]:
        out: dict[HookKey, list[SiteFn]] = {}
        for key, fn in zip(self.keys, self.fns):
            out.setdefault(key, []).append(fn)
        return out


def hook_key(iv: Intervention) -> HookKey:
    return (iv.layer, HOOK_SITE[iv.site])


_NAME_RE = re.compile(r"^\s*(?:layers\.)?(\d+)\.(attn\.head\.(\d+)|attn|mlp|resid)\s*$")
_HEAD_RE = re.compile(r"^\s*(\d+)\s*[.:]\s*(\d+)\s*$")


def parse_intervention(name: str, op: str = "zero", positions="all", source: str | None = None) -> Intervention:
    """An Intervention from its name ("layers.3.mlp", "layers.3.attn.head.1", "3.1", "3.resid").

    >>> parse_intervention("3.1").name
    'layers.3.attn.head.1'
    """
    head = _HEAD_RE.match(name)
    if head:
        return Intervention(int(head.group(1)), "attn.head", op, int(head.group(2)), positions, source)
    match = _NAME_RE.match(name)
    if not match:
        raise BadInput(
            f"{name!r} is not a component: write layers.L.attn.head.H (or L.H), layers.L.attn, layers.L.mlp "
            "or layers.L.resid"
        )
    layer, what = int(match.group(1)), match.group(2)
    if match.group(3) is not None:
        return Intervention(layer, "attn.head", op, int(match.group(3)), positions, source)
    return Intervention(layer, what, op, None, positions, source)


def parse_positions(text: str | None):
    """"all", "last" or a comma list of token positions ("0,3,-1") -> an Intervention's positions."""
    text = (text or "all").strip().lower()
    if text in ("all", "last"):
        return text
    try:
        return tuple(int(p) for p in re.split(r"[,\s]+", text) if p)
    except ValueError:
        raise BadInput(f"positions {text!r}: write all, last or a comma list of token positions") from None


def resolve_positions(positions, n_pos: int) -> list[int]:
    """Token positions (sorted, non-negative) that an Intervention's positions mean in a prompt of n_pos."""
    if positions == "all":
        return list(range(n_pos))
    if positions == "last":
        return [n_pos - 1]
    if isinstance(positions, str) or not positions:
        raise BadInput(f"positions {positions!r}: use 'all', 'last' or a non-empty list of token positions")
    out = set()
    for p in positions:
        if not -n_pos <= int(p) < n_pos:
            raise BadInput(f"position {p} does not exist: the prompt has positions 0-{n_pos - 1} (or -1 to -{n_pos})")
        out.add(int(p) % n_pos)
    return sorted(out)


def _writer(head: int | None, idx: list[int], values, add: bool = False) -> SiteFn:
    """Site function writing `values` (broadcast to (batch, len(idx), *component)) at positions idx."""
    index = torch.tensor(idx, dtype=torch.long)
    cache: dict = {}

    def fn(x: torch.Tensor) -> torch.Tensor:
        if "v" not in cache:  # move once, on the first call, to wherever the model runs
            v = values.to(device=x.device, dtype=x.dtype) if torch.is_tensor(values) else values
            cache["v"], cache["i"] = v, index.to(x.device)
        v, i = cache["v"], cache["i"]
        out = x.clone()
        where = (slice(None), i) if head is None else (slice(None), i, head)
        out[where] = out[where] + v if add else v
        return out

    return fn


def site_fn(iv: Intervention, n_pos: int, values: torch.Tensor | None = None) -> tuple[SiteFn, tuple[str, ...]]:
    """The site function of one intervention on a prompt of n_pos tokens, and its notes.

    values: mean: (pos, component) per position from the start, or (component,) for all positions;
    patch: the source's activation (src_pos, component), aligned from the end; steer: the scaled
    direction (d_model,). component is d_head for attn.head, d_model otherwise.
    """
    idx = resolve_positions(iv.positions, n_pos)
    head = iv.head
    if iv.op == "zero":
        return _writer(head, idx, 0.0), ()
    if iv.op == "mean":
        return _writer(head, idx, values[idx] if values.dim() == 2 else values), ()
    if iv.op == "steer":
        return _writer(head, idx, values, add=True), ()
    n_src = values.shape[0]
    offset = n_pos - n_src
    pairs = [(p, p - offset) for p in idx if 0 <= p - offset < n_src]
    if not pairs:
        raise BadInput(
            f"none of positions {list(iv.positions) if not isinstance(iv.positions, str) else iv.positions} has a "
            f"counterpart in the source prompt ({n_src} tokens, aligned from the end with the prompt's {n_pos})"
        )
    notes = []
    if n_src != n_pos:
        notes.append(
            f"patch source has {n_src} tokens and the prompt {n_pos}: positions aligned from the end "
            f"(prompt position p takes source position p - {offset})"
        )
    if len(pairs) < len(idx):
        notes.append(f"{len(idx) - len(pairs)} position(s) have no source counterpart and were left clean")
    target, source = zip(*pairs)
    return _writer(head, list(target), values[list(source)]), tuple(notes)


def forward_last(handle: ModelHandle, ids: torch.Tensor, fns) -> torch.Tensor:
    """Last-position logits (batch, d_vocab), float32, with the site functions in force."""
    # The last position as an index, not a count: indexing copies it into a contiguous tensor, so the
    # output head is one matmul; the strided slice a count makes runs as a bmm over copies of the
    # (d_vocab, d_model) weight, 7x slower at batch 54 on CPU.
    # Spread over devices, the index would be moved to the first device and the hidden states sit on
    # the last one: keep the count there.
    last = 1 if spread(handle.model) else torch.tensor([ids.shape[1] - 1], device=ids.device)
    with torch.inference_mode(), hooks(handle.model, handle.arch, fns):
        out = handle.model(input_ids=ids, use_cache=False, logits_to_keep=last)
    return out.logits[:, -1].float()


def capture(handle: ModelHandle, ids: torch.Tensor, keys, masks=()) -> dict[HookKey, torch.Tensor]:
    """Activations (pos, ...) of batch row 0 at each hook key, float32, masks on (read after them)."""
    found: dict[HookKey, torch.Tensor] = {}

    def reader(key):
        def fn(x):
            found[key] = x[0].detach().float().clone()

        return fn

    fns = merge_fns(mask_fns(tuple(masks)), {key: [reader(key)] for key in set(keys)})
    forward_last(handle, ids, fns)
    return found


class _Enough(Exception):
    """Raised after the deepest hooked layer: the layers above it are not needed."""


def capture_many(handle: ModelHandle, prompts: list[torch.Tensor], keys, masks=(),
                 batch_size: int = 16) -> list[dict[HookKey, torch.Tensor]]:
    """Activations of several prompts (each ids (1, pos)) at each hook key, float32, masks on: per
    prompt {key: (pos, ...)}, equal to `capture` of that prompt alone.

    Prompts run batch_size at a time, each padded after its last token: with causal attention no real
    position sees the padding, and positions count from 0 in every row. The pass stops after the
    deepest layer a key needs."""
    keys = sorted(set(keys))
    deepest = max(layer for layer, _ in keys)
    out: list[dict[HookKey, torch.Tensor]] = []
    for lo in range(0, len(prompts), batch_size):
        chunk = prompts[lo:lo + batch_size]
        lengths = [ids.shape[1] for ids in chunk]
        batch = torch.zeros(len(chunk), max(lengths), dtype=chunk[0].dtype, device=chunk[0].device)
        for row, ids in enumerate(chunk):
            batch[row, :ids.shape[1]] = ids[0]
        found: dict[HookKey, torch.Tensor] = {}

        def reader(key):
            def fn(x):  # (batch, pos, ...)
                found[key] = x.detach().float().clone()
            return fn

        def stop(x):
            raise _Enough

        fns = merge_fns(mask_fns(tuple(masks)), {key: [reader(key)] for key in keys}, {(deepest, "resid.post"): [stop]})
        try:
            with torch.inference_mode(), hooks(handle.model, handle.arch, fns):
                handle.model(input_ids=batch, use_cache=False, logits_to_keep=1)
        except _Enough:
            pass
        out.extend({key: found[key][row, :n] for key in keys} for row, n in enumerate(lengths))
    return out


def component(iv: Intervention, activation: torch.Tensor) -> torch.Tensor:
    """The intervention's component of a captured hook activation: (pos, d_head) or (pos, d_model)."""
    return activation[:, iv.head] if iv.head is not None else activation


# ---- mean activations over a reference prompt set --------------------------------------------


@dataclass(frozen=True)
class Means:
    """Mean activation at one hook site over a reference prompt set."""

    per_position: torch.Tensor  # (pos, ...): at each of the first min_len positions, over the prompts
    overall: torch.Tensor  # (...): over every position of every prompt
    n_prompts: int
    min_len: int  # tokens in the shortest reference prompt


_MEANS: OrderedDict[tuple, dict[HookKey, Means]] = OrderedDict()
_MEANS_LOCK = threading.Lock()
_MEANS_KEEP = 8  # prompt sets x masks remembered per process


def reference_means(handle: ModelHandle, prompts: tuple[str, ...], keys, masks=()) -> dict[HookKey, Means]:
    """Mean activations over the reference prompts at each hook key; remembered per model, prompt
    set and masks, so a sweep or a prompt set reads the reference set once."""
    prompts = tuple(prompts)
    if not prompts:
        raise BadInput("the reference prompt set is empty: give at least one prompt")
    cache_key = (id(handle.model), handle.fingerprint, prompts, tuple(masks))
    with _MEANS_LOCK:
        known = dict(_MEANS.get(cache_key, {}))
    missing = sorted(set(keys) - set(known))
    if missing:
        runs = capture_many(handle, [encode_prompt(handle, p)[0] for p in prompts], missing, masks)
        min_len = min(run[missing[0]].shape[0] for run in runs)
        for key in missing:
            acts = [run[key] for run in runs]
            known[key] = Means(
                per_position=torch.stack([a[:min_len] for a in acts]).mean(0),
                overall=torch.cat(acts).mean(0),
                n_prompts=len(prompts),
                min_len=min_len,
            )
        with _MEANS_LOCK:
            _MEANS[cache_key] = {**_MEANS.get(cache_key, {}), **known}
            _MEANS.move_to_end(cache_key)
            while len(_MEANS) > _MEANS_KEEP:
                _MEANS.popitem(last=False)
    return {key: known[key] for key in keys}


def mean_values(iv: Intervention, means: Means, n_pos: int) -> tuple[torch.Tensor, str]:
    """Per-position means when every reference prompt is at least as long as the prompt, else the
    mean over positions; the note says which."""
    if means.min_len >= n_pos:
        note = f"mean ablation: mean over {means.n_prompts} reference prompts at each position (aligned from the start)"
        return component(iv, means.per_position)[:n_pos], note
    note = (
        f"mean ablation: mean over {means.n_prompts} reference prompts and all their positions (the shortest has "
        f"{means.min_len} tokens, fewer than the prompt's {n_pos}, so per-position means were not possible)"
    )
    return component(iv, means.overall[None])[0], note


def steering_direction(handle: ModelHandle, iv: Intervention, settings: OpSettings, masks=()) -> tuple[torch.Tensor, str]:
    """scale x direction (d_model,) and a note saying where the direction came from."""
    if iv.site not in STEER_SITES:
        raise BadInput(f"steering adds a d_model vector: pick site {', '.join(STEER_SITES)}, not {iv.site}")
    d_model = handle.arch.d_model
    if settings.direction is not None:
        direction = torch.tensor(settings.direction, dtype=torch.float32)
        if direction.shape != (d_model,):
            raise BadInput(f"the steering vector has {direction.numel()} values; the model's d_model is {d_model}")
        source = "a saved vector"
    elif settings.steer_prompts:
        plus, minus = settings.steer_prompts
        key = hook_key(iv)
        acts = [capture(handle, encode_prompt(handle, p)[0], [key], masks)[key][-1] for p in (plus, minus)]
        direction = acts[0] - acts[1]
        source = f"act({plus!r}) - act({minus!r}) at {iv.name}, last position"
    else:
        raise BadInput("steering needs a direction: two prompts (steer_prompts) or a saved vector (direction)")
    note = f"steering: {settings.scale:g} x direction from {source} (norm {float(direction.norm()):.4g})"
    return direction * settings.scale, note


def prepare(handle: ModelHandle, ids: torch.Tensor, interventions, settings: OpSettings = OpSettings(),
            masks=()) -> Prepared:
    """Site functions for the interventions on the prompt ids (1, pos).

    Runs the model on the patch source, the reference prompts or the steering prompts as the
    operations need, with the masks on.
    """
    arch = handle.arch
    masks = normalize_masks(masks, arch)
    ivs = tuple(iv.check(arch) for iv in interventions)
    if not ivs:
        raise BadInput("no intervention given: pick a head, an attention layer, an MLP or a residual stream")
    n_pos = ids.shape[1]
    notes: list[str] = []
    values: list[torch.Tensor | None] = [None] * len(ivs)

    sources = {iv.source for iv in ivs if iv.op == "patch"}
    for source in sources:
        if not source or not source.strip():
            raise BadInput("patching needs a source prompt to copy the activation from")
        members = [i for i, iv in enumerate(ivs) if iv.op == "patch" and iv.source == source]
        acts = capture(handle, encode_prompt(handle, source)[0], {hook_key(ivs[i]) for i in members}, masks)
        for i in members:
            values[i] = component(ivs[i], acts[hook_key(ivs[i])])

    mean_idx = [i for i, iv in enumerate(ivs) if iv.op == "mean"]
    if mean_idx:
        reference = settings.reference or default_reference_prompts()
        means = reference_means(handle, reference, {hook_key(ivs[i]) for i in mean_idx}, masks)
        for i in mean_idx:
            values[i], note = mean_values(ivs[i], means[hook_key(ivs[i])], n_pos)
            notes.append(note)

    for i, iv in enumerate(ivs):
        if iv.op == "steer" and iv.feature is None:
            values[i], note = steering_direction(handle, iv, settings, masks)
            notes.append(note)

    fns = []
    for iv, value in zip(ivs, values):
        fn, fn_notes = (feature_site_fn(handle, iv, resolve_positions(iv.positions, n_pos)) if iv.feature
                        else site_fn(iv, n_pos, value))
        fns.append(fn)
        notes.extend(fn_notes)
    return Prepared(
        interventions=ivs,
        keys=tuple(hook_key(iv) for iv in ivs),
        fns=tuple(fns),
        notes=tuple(dict.fromkeys(notes)),
        masks=masks,
    )
