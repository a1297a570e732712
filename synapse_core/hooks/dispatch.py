"""The only place that registers PyTorch hooks.

Every model prepared by `install_dispatch` gets one permanent attention function (registered with
transformers' AttentionInterface) and, while at least one `hooks()` block is open on it, one
dispatcher hook per site and layer. A dispatcher does nothing unless the *current thread's* open
`hooks()` block asked for that site, so two browser sessions sharing one model each see only their
own interventions. Handles are removed in `finally` when the last block on the model closes.

Sites, per layer L (names as in `layers.L.<site>`):
  attn.z        head outputs, the input of the output projection   # (batch, pos, head, d_head)
  attn.pattern  attention probabilities                            # (batch, head, q_pos, k_pos)
  attn.out      what the attention block adds to the residual stream (the projection's output,
                post-normed in Gemma 2 and 3: arch.attn_write)     # (batch, pos, d_model)
  mlp.in        what the MLP reads: the residual stream after the norm before the MLP, the input
                of arch.mlp_read (replacing it changes what the MLP computes)  # (batch, pos, d_model)
  mlp.out       what the MLP adds to the residual stream (arch.mlp_write)  # (batch, pos, d_model)
  resid.post    residual stream after the layer                    # (batch, pos, d_model)
A site function takes the tensor and returns a replacement or None (keep it). Functions run in
the order given; a hooks() block opened inside another adds its functions after the outer
block's. An attn.pattern function with the attribute `last_row = True` promises to only read the
last query row: when every pattern function on a layer promises that, the layer keeps its fused
SDPA kernel and only that row of probabilities is computed (batch, head, 1, k_pos); such a
function that returns a tensor raises HookError, since its edit could not take effect. One with
`query_row = True` is not given probabilities at all: it is called as fn(query, scaling, softcap) with
the last query row (batch, head, 1, d_head), after rotary embeddings and before scaling, so that a
reader can rebuild that row's probabilities later from the keys in the KV cache; it must return None.

attn.pattern functions run inside Synapse's attention function, so they need the model's attention
to run through it: hooks() raises HookError when it does not (another implementation set with
`set_attn_implementation`, a copy of a prepared model, or a wrapper passed instead of the model
that was prepared), rather than letting masks and captures silently do nothing.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from ..arch.adapters import Architecture
from ..common.errors import SynapseError

SITES = ("attn.z", "attn.pattern", "attn.out", "mlp.in", "mlp.out", "resid.post")
ATTN_IMPLEMENTATION = "synapse"

SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]
SiteFns = Mapping[tuple[int, str], Sequence[SiteFn]]  # (layer, site) -> functions

# model id -> the functions of every hooks() block open in this thread, outer blocks' first
_ACTIVE: contextvars.ContextVar[dict[int, SiteFns]] = contextvars.ContextVar("synapse_hooks", default={})
_LOCK = threading.Lock()
_INSTALLED: dict[int, "_Dispatch"] = {}
_ATTN_LAYER: "weakref.WeakKeyDictionary[nn.Module, tuple[int, int]]" = weakref.WeakKeyDictionary()


class HookError(SynapseError):
    """A site function could not take effect: the attention does not run through Synapse's
    function, or a read-only pattern function tried to edit."""


class _Dispatch:
    """The dispatcher handles on one model, shared by every open hooks() block on it."""

    def __init__(self, model: nn.Module, arch: Architecture):
        self.model_id = id(model)
        self.users = 0
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        try:
            for layer in range(arch.n_layers):
                self._install(arch, layer)
        except BaseException:
            self.remove()
            raise

    def _install(self, arch: Architecture, layer: int) -> None:
        mid, n_heads, d_head = self.model_id, arch.n_heads, arch.d_head
        lead = threading.local()  # per thread: (batch, pos) of this layer's current input

        def z_hook(module, args):
            x = args[0]
            lead.shape = x.shape[:-1]
            fns = _fns(mid, layer, "attn.z")
            if not fns:
                return None
            z = x.view(*x.shape[:-1], n_heads, d_head)
            z = _apply(fns, z)
            return (z.reshape(x.shape), *args[1:])

        def mlp_in_hook(module, args):
            fns = _fns(mid, layer, "mlp.in")
            if not fns:
                return None
            x = args[0]
            if x.dim() == 2 and getattr(lead, "shape", None) is not None:  # OPT: (batch * pos, d_model)
                return (_apply(fns, x.reshape(*lead.shape, x.shape[-1])).reshape(x.shape), *args[1:])
            return (_apply(fns, x), *args[1:])

        def out_hook(site):
            def hook(module, args, output):
                fns = _fns(mid, layer, site)
                if not fns:
                    return None
                if isinstance(output, tuple):
                    return (_apply(fns, output[0]), *output[1:])
                if output.dim() == 2 and getattr(lead, "shape", None) is not None:
                    # OPT runs its MLP on (batch * pos, d_model); site functions get (batch, pos, d_model)
                    return _apply(fns, output.reshape(*lead.shape, output.shape[-1])).reshape(output.shape)
                return _apply(fns, output)

            return hook

        self.handles.append(arch.out_proj[layer].register_forward_pre_hook(z_hook))
        self.handles.append(arch.attn_write[layer].register_forward_hook(out_hook("attn.out")))
        self.handles.append(arch.mlp_read[layer].register_forward_pre_hook(mlp_in_hook))
        self.handles.append(arch.mlp_write[layer].register_forward_hook(out_hook("mlp.out")))
        self.handles.append(arch.layers[layer].register_forward_hook(out_hook("resid.post")))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _fns(model_id: int, layer: int, site: str) -> Sequence[SiteFn] | None:
    table = _ACTIVE.get().get(model_id)
    return table.get((layer, site)) if table else None


def _apply(fns: Sequence[SiteFn], x: torch.Tensor) -> torch.Tensor:
    for fn in fns:
        out = fn(x)
        if out is not None:
            x = out
    return x


def _check_attention(model: nn.Module, arch: Architecture, layers) -> None:
    """Raise HookError unless each layer's attention will call synapse_attention for this model."""
    for layer in sorted(set(layers)):
        attn = arch.attn[layer]
        implementation = getattr(getattr(attn, "config", None) or model.config, "_attn_implementation", None)
        if implementation != ATTN_IMPLEMENTATION:
            raise HookError(
                f"layer {layer}'s attention runs through {implementation!r}, not Synapse's attention function, so "
                "attention-level masks and pattern captures would do nothing: load the model through Synapse "
                f"(or call model.set_attn_implementation({ATTN_IMPLEMENTATION!r}) again)")
        if _ATTN_LAYER.get(attn) != (id(model), layer):
            raise HookError(
                f"layer {layer}'s attention module was not prepared as part of this model (a copy, or a wrapper "
                "passed instead of the prepared model), so attention-level masks and pattern captures would do "
                "nothing: prepare the model you run (model.loading.prepare) and pass that model")


def install_dispatch(model: nn.Module, arch: Architecture) -> None:
    """Route the model's attention through Synapse's function (identical to SDPA when idle).

    Called once when a model is loaded; it registers no module hooks.
    """
    for layer, attn in enumerate(arch.attn):
        _ATTN_LAYER[attn] = (id(model), layer)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    else:  # pragma: no cover - every supported family has it
        model.config._attn_implementation = ATTN_IMPLEMENTATION


@contextlib.contextmanager
def hooks(model: nn.Module, arch: Architecture, fns: SiteFns) -> Iterator[None]:
    """Run the body with `fns` applied to this model in this thread; remove every handle after.

    >>> with hooks(model, arch, {(3, "attn.z"): [lambda z: z * 0]}):
    ...     logits = model(ids).logits
    """
    for layer, site in fns:
        if site not in SITES:
            raise ValueError(f"unknown hook site {site!r}; sites: {', '.join(SITES)}")
        if not 0 <= layer < arch.n_layers:
            raise ValueError(f"hook on layer {layer}: the model has layers 0-{arch.n_layers - 1}")
    key = id(model)
    outer = _ACTIVE.get().get(key, {})
    merged = {k: list(v) for k, v in outer.items()}
    for k, v in fns.items():
        if v:
            merged.setdefault(k, []).extend(v)
    _check_attention(model, arch, [layer for layer, site in merged if site == "attn.pattern"])
    with _LOCK:
        dispatch = _INSTALLED.get(key)
        if dispatch is None:
            dispatch = _INSTALLED[key] = _Dispatch(model, arch)
        dispatch.users += 1
    table = dict(_ACTIVE.get())
    table[key] = merged
    token = _ACTIVE.set(table)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        with _LOCK:
            dispatch.users -= 1
            if dispatch.users == 0:
                dispatch.remove()
                del _INSTALLED[key]


@contextlib.contextmanager
def block_calls(arch: Architecture) -> Iterator[dict[int, tuple[tuple, dict]]]:
    """Record how each decoder block is called during the body: layer -> (args, kwargs), the last call.

    Lets an analysis run one block again on edited hidden states with exactly the masks, position
    embeddings and keyword arguments the model gave it. Handles are removed in `finally`.
    """
    calls: dict[int, tuple[tuple, dict]] = {}
    handles = []
    try:
        for layer, block in enumerate(arch.layers):
            def record(module, args, kwargs, layer=layer):
                calls[layer] = (args, kwargs)

            handles.append(block.register_forward_pre_hook(record, with_kwargs=True))
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def active_handle_count(model: nn.Module) -> int:
    """How many dispatcher handles are registered on the model right now (0 when no block is open)."""
    dispatch = _INSTALLED.get(id(model))
    return len(dispatch.handles) if dispatch else 0


def _causal_mask(q_len: int, k_len: int, device) -> torch.Tensor:
    # queries are the last q_len positions of the k_len keys
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q_pos  # (q_pos, k_pos), True = attend


def attention_probs(query, key, attention_mask, scaling=None, softcap=None) -> torch.Tensor:
    """Softmax attention probabilities, computed explicitly.

    query (batch, head, q_pos, d_head); key (batch, kv_head, k_pos, d_head); attention_mask None
    (plain causal, queries being the last q_pos keys), boolean (True = attend) or additive, its
    last two dims (q_pos, k_pos). Returns (batch, head, q_pos, k_pos).
    """
    batch, n_heads, q_len, d_head = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    if scaling is None:
        scaling = d_head ** -0.5
    # grouped-query attention without copying the keys: (batch, kv_head, group * q_pos, d_head)
    grouped = query.reshape(batch, kv_heads, (n_heads // kv_heads) * q_len, d_head)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).view(batch, n_heads, q_len, k_len) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is None and q_len > 1:
        attention_mask = _causal_mask(q_len, k_len, query.device)
    if attention_mask is not None:  # None with one query: the last position sees every key
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., :k_len]
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def eager_attention(module, query, key, value, attention_mask, scaling=None, softcap=None, fns=()):
    """Attention computed explicitly so its probabilities can be read and edited.

    query (batch, head, q_pos, d_head); key, value (batch, kv_head, k_pos, d_head).
    Returns output (batch, q_pos, head, d_head) and probabilities (batch, head, q_pos, k_pos).
    """
    probs = _apply(fns, attention_probs(query, key, attention_mask, scaling, softcap))
    groups = query.shape[1] // value.shape[1]
    if groups > 1:
        value = value.repeat_interleave(groups, dim=1)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def last_row_probs(query, key, attention_mask, scaling=None, softcap=None) -> torch.Tensor:
    """Attention probabilities of the last query position only: (batch, head, 1, k_pos)."""
    row = None if attention_mask is None else attention_mask[..., -1:, :]
    return attention_probs(query[:, :, -1:], key, row, scaling, softcap)


def synapse_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The attention function of every prepared model: SDPA unless this thread asked for patterns."""
    owner = _ATTN_LAYER.get(module)
    fns = _fns(owner[0], owner[1], "attn.pattern") if owner else None
    softcap = kwargs.get("softcap")
    if fns and any(getattr(fn, "query_row", False) for fn in fns):
        row, scale = query[:, :, -1:], scaling if scaling is not None else query.shape[-1] ** -0.5
        for fn in fns:
            if getattr(fn, "query_row", False) and fn(row, scale, softcap) is not None:
                raise HookError(f"query-row function {getattr(fn, '__name__', fn)!r} on layer {owner[1]} returned a "
                                "tensor: it reads the query, it cannot edit the attention")
        fns = [fn for fn in fns if not getattr(fn, "query_row", False)]
    if softcap is None and (not fns or all(getattr(fn, "last_row", False) for fn in fns)):
        out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        if fns:
            row = last_row_probs(query, key, attention_mask, scaling)
            for fn in fns:
                if fn(row) is not None:
                    raise HookError(f"pattern function {getattr(fn, '__name__', fn)!r} on layer {owner[1]} promises "
                                    "to only read (last_row = True) but returned a tensor: drop last_row to edit "
                                    "the probabilities")
        return out
    return eager_attention(module, query, key, value, attention_mask, scaling=scaling, softcap=softcap, fns=fns or ())


AttentionInterface.register(ATTN_IMPLEMENTATION, synapse_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)
