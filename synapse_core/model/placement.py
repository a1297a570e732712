"""Models larger than one device: accelerate's device_map puts each block where it fits.

A device map is "auto" or "balanced" (blocks spread evenly over the GPUs, accelerate's
get_balanced_memory), "balanced_low_0" (GPU 0 kept light, for generation), "sequential" (fill GPU 0,
then 1, ...), or an explicit map from module names to devices, e.g.

    {"model.embed_tokens": 0, "model.layers.0": 0, ..., "model.layers.29": 1, "model.norm": 1, "lm_head": 1}

(a device is a GPU index, "cuda:N", "cpu" or "mps"; JSON on the command line, `--device-map`, or in
SYNAPSE_DEVICE_MAP). The model is dispatched with accelerate's hooks always attached, so a block's
inputs are moved to its device before it runs and the logits come back on the device of the
input ids (`input_device`). Everything else in the engine moves a tensor it made to the device of
the activation it meets (`x.device`), never to one fixed device, so masks, site functions and
sweeps stay correct when layer L lives on another device than layer L + 1.

Offload is refused (disk, meta, or "cpu" beside GPUs, which accelerate treats as offload): the
engine reads weights directly (head weights, composition, the unembedding), and an offloaded weight
is not there between passes.
"""
from __future__ import annotations

import json
import logging
from collections import Counter

import torch
from torch import nn

from ..common.errors import ModelLoadError

NAMED_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(text) -> str | dict | None:
    """A device map from a flag, a setting or a widget: None (no map), a name, or JSON of a map.

    >>> parse_device_map('{"": "cpu"}')
    {'': 'cpu'}
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, dict):
        return {str(k): _device_value(k, v) for k, v in text.items()}
    text = str(text).strip()
    if text in NAMED_MAPS:
        return text
    if not text.startswith("{"):
        raise ModelLoadError(f"device map {text!r}: use {', '.join(NAMED_MAPS)} or a JSON object of "
                             'module name -> device, e.g. {"model.layers.0": 0, "lm_head": 1}')
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"device map {text[:80]!r} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict) or not value:
        raise ModelLoadError(f"device map {text[:80]!r}: give a non-empty JSON object of module name -> device")
    return {str(k): _device_value(k, v) for k, v in value.items()}


def _device_value(module: str, device) -> int | str:
    if isinstance(device, bool) or not isinstance(device, (int, str)):
        raise ModelLoadError(f"device map: {module!r} -> {device!r} is not a device (a GPU index, cuda:N, cpu or mps)")
    if isinstance(device, str) and device.strip() in ("disk", "meta"):
        raise ModelLoadError(f"device map: {module!r} -> {device!r}: disk and meta offload are not supported "
                             "(every layer is read on every pass); put it on a GPU or on cpu")
    if isinstance(device, int):
        if device < 0:
            raise ModelLoadError(f"device map: {module!r} -> {device}: a GPU index is 0 or more")
        return device
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"device map: {module!r} -> {device!r} is not a device (a GPU index, cuda:N, cpu or mps)") from None
    return device.strip() if isinstance(device, str) else device


def _check_device_exists(module: str, device) -> None:
    dev = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ModelLoadError(f"device map: {module!r} -> {device!r}, but this machine has no CUDA GPU")
        if (dev.index or 0) >= count:
            raise ModelLoadError(f"device map: {module!r} -> {device!r} does not exist: this machine has cuda:0-{count - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device map: {module!r} -> {device!r}, but this machine has no Apple GPU")


def _tensor_names(model: nn.Module) -> list[str]:
    # tied weights count under every name (lm_head.weight beside the embedding), as accelerate checks them
    return [n for n, _ in model.named_parameters(remove_duplicate=False)] + \
           [n for n, _ in model.named_buffers(remove_duplicate=False)]


def _covered(name: str, prefixes) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def missing_modules(model: nn.Module, device_map: dict) -> list[str]:
    """The outermost modules none of whose weights the map places ("model.layers.7", "lm_head")."""
    names = _tensor_names(model)
    missing = [n for n in names if not _covered(n, device_map)]
    if not missing:
        return []
    total, absent = Counter(), Counter()
    for group, counter in ((names, total), (missing, absent)):
        for name in group:
            parts = name.split(".")
            for k in range(1, len(parts)):
                counter[".".join(parts[:k])] += 1
    out = set()
    for name in missing:
        parts = name.split(".")
        prefix = next((".".join(parts[:k]) for k in range(1, len(parts))
                       if total[".".join(parts[:k])] == absent[".".join(parts[:k])]), name)
        out.add(prefix)
    return sorted(out, key=lambda n: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in n.split(".")])


def plan(model: nn.Module, device_map) -> dict[str, int | str]:
    """An explicit map for the model: a named map worked out by accelerate from the free memory of
    this machine's devices, an explicit one checked to place every weight on a device that exists."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    device_map = parse_device_map(device_map)
    if device_map is None:
        raise ModelLoadError("no device map given")
    if isinstance(device_map, str):
        no_split = sorted(getattr(model, "_no_split_modules", None) or ())
        dtype = next(model.parameters()).dtype
        memory = None
        if device_map != "sequential":
            memory = get_balanced_memory(model, no_split_module_classes=no_split, dtype=dtype,
                                         low_zero=device_map == "balanced_low_0")
        resolved = dict(infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype))
        offloaded = sorted(k for k, v in resolved.items() if v in ("disk", "meta"))
        if offloaded:
            raise ModelLoadError(f"device map {device_map!r}: {', '.join(offloaded[:5])} do not fit in this machine's "
                                 "GPU and CPU memory, and disk offload is not supported")
        device_map = resolved
    missing = missing_modules(model, device_map)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ModelLoadError(f"the device map does not place every layer: no device for {shown} "
                             '(add them, or use "auto")')
    for module, device in device_map.items():
        _check_device_exists(module, device)
    devices = {str(d) for d in device_map.values()}
    if "cpu" in devices and len(devices) > 1:
        on_cpu = sorted(k for k, v in device_map.items() if v == "cpu")
        raise ModelLoadError(f"device map puts {', '.join(on_cpu[:5])} on cpu beside GPUs: accelerate would offload "
                             "those weights and stream them in on every pass, out of reach of the engine's weight "
                             "reads; place every module on a GPU (or everything on cpu)")
    return device_map


def place(model: nn.Module, device_map) -> tuple[nn.Module, torch.device]:
    """Dispatch the model over the map's devices with accelerate's hooks; returns it and the device
    its input ids go to."""
    from accelerate import dispatch_model

    resolved = plan(model, device_map)
    main = next((d for d in resolved.values() if d != "cpu"), None)  # the first GPU the map names
    log = logging.getLogger("accelerate.big_modeling")
    level = log.level
    if main is None:  # all on cpu: nothing is offloaded, whatever accelerate's warning says
        log.setLevel(logging.ERROR)
    try:
        model = dispatch_model(model, device_map=resolved, main_device=main, force_hooks=True)
    finally:
        log.setLevel(level)
    return model, input_device(model)


def input_device(model: nn.Module) -> torch.device:
    """Where a dispatched model wants its input ids: the embedding's execution device."""
    embed = model.get_input_embeddings()
    hook = getattr(embed, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is None:
        device = embed.weight.device
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def spread(model: nn.Module) -> bool:
    """True when the model's blocks run on more than one device (accelerate's hf_device_map)."""
    return len({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}) > 1
