"""What a traced generation reads while it generates, and the fidelity check after it.

The heads are read in the very forward passes that chose the tokens: at every decoding step, each
layer's head outputs (the input of the output projection) and, when asked, its attention row at the
position that predicts the next token. The pattern readers promise to read only that row, so every
layer keeps its fused SDPA kernel and only one row of probabilities is computed (see hooks.dispatch).

Fidelity is then checked by one more forward pass over the predicting positions: masks on, no
capture, the prompt's keys and values taken from the generation's own KV cache (cut back). Its logits
must equal the ones generation chose from; and every masked head must have read exactly 0 at every
position generation processed.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..arch.spec import HeadMask
from ..hooks.dispatch import attention_probs, hooks
from ..hooks.masking import mask_fns
from ..model.generation import Decoded
from ..model.loading import ModelHandle


@dataclass(frozen=True)
class Fidelity:
    """Whether the trace's numbers come from the computation that chose the tokens.

    Activity and attention are read during generation itself (masks first, then the readers). A second
    forward pass over the predicting positions (masks on, no capture, no sampling) must give the logits
    generation chose from, whatever the sampling; and every masked head's input to the output
    projection, read at every position generation processed, must be exactly zero."""

    argmax_agreement: float  # fraction of steps where the check pass's argmax equals the argmax generation saw
    max_logit_diff: float  # largest absolute logit difference over all steps and the vocabulary
    masks_verified: bool  # every masked head read exactly 0 at every position (True when none is masked)
    unverified_masks: tuple[str, ...] = ()  # "L.H" of masked heads that did not read 0


class StepCapture:
    """Site functions that read, at each forward pass of a decoding loop, every layer's head outputs
    at the last position (the one that predicts the next token) and, for its attention row, either that
    position's query (query layers: the row is rebuilt after the loop) or the row itself.

    After the loop: `activity(arch)` (step, layer, head) and `attention(k_len, cache)` (step, layer, head, k_pos).
    Masked heads' largest |z| over every position processed is kept to verify the masks."""

    def __init__(self, n_layers: int, masks: tuple[HeadMask, ...], capture_attention: bool,
                 query_layers: frozenset[int] = frozenset()):
        self.n_layers = n_layers
        self.capture_attention = capture_attention
        self.z: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]  # per layer, per step: (head, d_head)
        self.rows: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]  # per layer, per step: (head, k_pos)
        # layers whose rows are rebuilt after generation from each step's query row and the cached keys
        # (see query_layers()); the others read the probabilities at each step
        edited = {m.layer for m in masks if isinstance(m, HeadMask) and m.level in ("attention", "both")}
        self.query_layers = frozenset(query_layers) - edited
        self.queries: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]  # per step: (head, d_head)
        self.scale: dict[int, tuple[float, float | None]] = {}  # layer -> (scaling, softcap)
        self.masked: dict[int, list[int]] = {}
        for m in masks:
            if isinstance(m, HeadMask):  # a quarantined feature is not a head: nothing of it reads 0 at attn.z
                self.masked.setdefault(m.layer, []).append(m.head)
        self.masked_peak: dict[int, torch.Tensor] = {}  # layer -> (masked head,) largest |z| so far

    def fns(self) -> dict:
        table = {(layer, "attn.z"): [self._read_z(layer)] for layer in range(self.n_layers)}
        if self.capture_attention:
            table.update({(layer, "attn.pattern"): [self._read_query(layer) if layer in self.query_layers
                                                    else self._read_row(layer)] for layer in range(self.n_layers)})
        return table

    def _read_z(self, layer: int):
        heads = self.masked.get(layer)

        def fn(z):  # (batch, pos, head, d_head), masks already applied
            self.z[layer].append(z[0, -1])  # a view; the pass makes a new z each step and never edits it
            if heads:
                peak = z[0][:, heads].detach().abs().amax(dim=(0, 2)).float().cpu()
                old = self.masked_peak.get(layer)
                self.masked_peak[layer] = peak if old is None else torch.maximum(old, peak)
        return fn

    def _read_row(self, layer: int):
        def fn(probs):  # (batch, head, q_pos, k_pos); only the last query row is computed
            self.rows[layer].append(probs[0, :, -1].detach().float().cpu())
        fn.last_row = True
        return fn

    def _read_query(self, layer: int):
        def fn(query, scaling, softcap):  # query (batch, head, 1, d_head), after rotary embeddings
            self.queries[layer].append(query[0, :, -1])
            self.scale[layer] = (scaling, softcap)
        fn.query_row = True
        return fn

    def activity(self, arch) -> np.ndarray:
        """|| W_O^h z_h || at each step, layer and head: (step, layer, head)."""
        out = []
        for layer in range(self.n_layers):
            w_o = arch.head_weights(layer)["W_O"].detach().float()  # (head, d_model, d_head)
            z = torch.stack(self.z[layer]).float().to(w_o.device).transpose(0, 1)  # (head, step, d_head)
            out.append(torch.bmm(z, w_o.transpose(1, 2)).norm(dim=-1).T.cpu())  # (step, head)
        return torch.stack(out, dim=1).numpy()

    def attention(self, k_len: int, cache) -> np.ndarray:
        """(step, layer, head, k_pos): each step's row, zeros past its own position (causal).

        Query layers' rows are rebuilt from each step's query and the keys in the generation's KV cache
        (call this before the cache is cut back): softmax(scaling * q . k) over the keys up to the
        step's own position, as the fused kernel computed them."""
        n_steps = len(self.z[0])
        n_heads = self.z[0][0].shape[0]
        out = torch.zeros(n_steps, self.n_layers, n_heads, k_len)
        for layer in range(self.n_layers):
            if layer in self.query_layers:
                out[:, layer] = self._rebuild(layer, cache.layers[layer].keys)
                continue
            for step, row in enumerate(self.rows[layer]):
                out[step, layer, :, :row.shape[-1]] = row
        return out.numpy()

    def _rebuild(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        """keys (batch, kv_head, k_pos, d_head) -> probabilities (step, head, k_pos): the steps' queries are
        the last positions of the keys, so the plain causal mask of attention_probs is theirs."""
        query = torch.stack(self.queries[layer]).float().transpose(0, 1)[None]  # (1, head, step, d_head)
        scaling, softcap = self.scale[layer]
        probs = attention_probs(query, keys[:1].float(), None, scaling, softcap)  # (1, head, step, k_pos)
        return probs[0].transpose(0, 1).cpu()

    def unverified(self, masks: tuple[HeadMask, ...]) -> tuple[str, ...]:
        """"L.H" of masked heads that did not read exactly 0 at every position."""
        return tuple(f"{m.layer}.{m.head}" for m in masks if isinstance(m, HeadMask)
                     if m.layer not in self.masked_peak
                     or float(self.masked_peak[m.layer][self.masked[m.layer].index(m.head)]) != 0.0)


def query_layers(model, n_layers: int) -> frozenset[int]:
    """Layers whose attention is plain causal over every cached key (no sliding window), so a step's
    row can be rebuilt from its query and the KV cache after generation."""
    config = getattr(model.config, "get_text_config", lambda: model.config)()
    types = getattr(config, "layer_types", None)
    if types:
        return frozenset(i for i, kind in enumerate(types[:n_layers]) if kind == "full_attention")
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return frozenset()
    return frozenset(range(n_layers))


def check_fidelity(handle: ModelHandle, prompt_ids: torch.Tensor, decoded: Decoded, masks: tuple[HeadMask, ...],
                   unverified: tuple[str, ...]) -> Fidelity:
    """One forward pass over the predicting positions (the last prompt token and the generated tokens
    but the last), masks on, compared with the logits generation chose from. The prompt before them is
    the generation's own KV cache, cut back, so a long prompt is not run twice; where the cache cannot be
    cut back (sliding-window layers) the whole sequence runs."""
    n_steps = len(decoded.ids)
    first = prompt_ids.shape[0] - 1  # the position that predicts generated token 0
    full = torch.cat([prompt_ids, torch.tensor(decoded.ids[:-1], dtype=prompt_ids.dtype, device=prompt_ids.device)])
    past = _prefix(decoded.cache, first)
    start = first if past is not None else 0
    scope = hooks(handle.model, handle.arch, mask_fns(masks)) if masks else contextlib.nullcontext()
    with torch.inference_mode(), scope:
        logits = handle.model(input_ids=full[None, start:], past_key_values=past, use_cache=past is not None,
                              logits_to_keep=n_steps).logits[0].float().cpu()
    chosen = decoded.step_logits.float()
    return Fidelity(
        argmax_agreement=float((logits.argmax(-1) == chosen.argmax(-1)).float().mean()),
        max_logit_diff=float((logits - chosen).abs().max()),
        masks_verified=not unverified,
        unverified_masks=unverified,
    )


def _prefix(cache, keep: int):
    """The generation's KV cache cut back to its first `keep` positions, or None where it cannot be
    (no cache, nothing to keep, or sliding-window layers that dropped old positions)."""
    layers = getattr(cache, "layers", None)
    if not keep or not layers or any(getattr(layer, "is_sliding", False) for layer in layers):
        return None
    cache.crop(keep - cache.get_seq_length())  # a negative count: remove that many positions from the end
    return cache if cache.get_seq_length() == keep else None
