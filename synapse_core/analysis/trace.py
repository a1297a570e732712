"""Traced generation: which heads wrote most into the residual stream for each generated token, and
where they looked."""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..arch.spec import FeatureMask, HeadMask, normalize_masks
from ..hooks.masking import mask_fns, merge_fns
from ..model.generation import Progress, Sampling, decode
from ..model.loading import ModelHandle
from ..model.tokens import encode_prompt, token_strings
from .composition import composition_scores
from .tracecapture import Fidelity, StepCapture, check_fidelity, query_layers

__all__ = ["Fidelity", "Generation", "HeadScore", "PathEdge", "PathHead", "ThoughtPath", "TraceResult", "generate",
           "thought_path", "top_heads", "trace"]

ACTIVITY_METHOD = (
    "|| W_O^h z_h ||: the L2 norm of what the head writes into the residual stream (its output z_h through its "
    "slice W_O^h of the attention output projection, bias left out) at the position that predicts the token"
)
DOMINANT_FACTOR = 2.0  # a path head "carries" its layer when its share exceeds this many even shares (1/n_heads)
EDGE_METHOD = (
    "head-to-head edges: the largest of the Q-, K- and V-composition scores of the two heads' weights "
    "(layer norms left out); Prompt_Ingress and Response_Egress edges carry no score"
)
PROBS_METHOD = (
    "sampled: p(token) under the distribution it was drawn from (softmax of logits / temperature over the top-k; "
    "greedy puts all the mass on the argmax, so 1); model: p(token) under the model's own distribution "
    "(temperature 1, whole vocabulary)"
)


@dataclass(frozen=True)
class HeadScore:
    layer: int
    head: int
    score: float  # the head's activity (ACTIVITY_METHOD), mean over generated tokens


@dataclass(frozen=True)
class PathHead:
    layer: int
    head: int
    activity: float  # ACTIVITY_METHOD, mean over generated tokens
    share: float  # activity / the sum of every head's activity in this layer, in [0, 1]


@dataclass(frozen=True)
class PathEdge:
    source: str
    target: str
    composition: float | None  # largest Q/K/V composition score in [0, 1]; None on ingress/egress edges
    kind: str  # "q", "k" or "v" (which composition is largest), or "ingress" / "egress"


@dataclass(frozen=True)
class ThoughtPath:
    """The most active head of each layer, chained from Prompt_Ingress to Response_Egress."""

    nodes: tuple[str, ...]  # "Prompt_Ingress", "L0.H3", ..., "Response_Egress"
    heads: tuple[PathHead, ...]  # the head on the path in each layer
    edges: tuple[PathEdge, ...]
    share_threshold: float  # a head above this share of its layer's activity counts toward the depth
    edge_method: str = EDGE_METHOD

    @property
    def depth(self) -> int:
        """Lineage depth: how many heads on the path carry more than share_threshold of their layer's
        activity (DOMINANT_FACTOR even shares). Between 0 and n_layers; it changes with the input."""
        return sum(h.share > self.share_threshold for h in self.heads)


@dataclass(frozen=True)
class Generation:
    """The generated tokens, before the heads are read (what the page shows first)."""

    generated_ids: tuple[int, ...]
    generated_tokens: tuple[str, ...]
    generated_text: str
    sampled_probs: tuple[float, ...]  # PROBS_METHOD "sampled", per generated token
    model_probs: tuple[float, ...]  # PROBS_METHOD "model", per generated token
    stopped_on_eos: bool


@dataclass(frozen=True)
class TraceResult:
    """Everything one traced generation produced. Arrays are numpy, float32."""

    model: str
    fingerprint: str
    prompt: str
    prompt_ids: tuple[int, ...]
    prompt_tokens: tuple[str, ...]
    generated_ids: tuple[int, ...]
    generated_tokens: tuple[str, ...]
    generated_text: str
    sampled_probs: tuple[float, ...]  # p(token) under the distribution it was drawn from (PROBS_METHOD)
    model_probs: tuple[float, ...]  # p(token) under the model at temperature 1, whole vocabulary
    step_activity: np.ndarray  # (step, layer, head): ACTIVITY_METHOD
    head_activity: np.ndarray  # (layer, head): mean over steps
    attention: np.ndarray | None  # (step, layer, head, k_pos): the predicting position's attention; None when not captured
    top_heads: tuple[HeadScore, ...]
    thought_path: ThoughtPath
    fidelity: Fidelity
    masked_heads: tuple[HeadMask, ...]
    sampling: Sampling
    stopped_on_eos: bool
    warnings: tuple[str, ...] = ()
    masked_features: tuple[FeatureMask, ...] = ()  # quarantined SAE features, zeroed at their site in every pass
    activity_method: str = ACTIVITY_METHOD
    probs_method: str = PROBS_METHOD

    @property
    def n_layers(self) -> int:
        return self.head_activity.shape[0]

    def headline(self) -> str:
        """One line for the History list."""
        top = self.top_heads[0] if self.top_heads else None
        return f"\u2192 {self.generated_text!r}" + (f" \u00b7 most active head {top.layer}.{top.head}" if top else "")

    def to_json(self) -> dict:
        """The CLI's --json object (plus a few fields); plain lists and numbers only."""
        path = self.thought_path
        return {
            "model": self.model,
            "fingerprint": self.fingerprint,
            "prompt": self.prompt,
            "prompt_tokens": list(self.prompt_tokens),
            "generated_tokens": list(self.generated_tokens),
            "generated_text": self.generated_text,
            "sampled_probs": [round(p, 6) for p in self.sampled_probs],
            "model_probs": [round(p, 6) for p in self.model_probs],
            "probs_method": self.probs_method,
            "head_activity": np.round(self.head_activity, 6).tolist(),
            "top_heads": [asdict(h) for h in self.top_heads],
            "thought_path": {
                "nodes": list(path.nodes),
                "heads": [asdict(h) for h in path.heads],
                "edges": [asdict(e) for e in path.edges],
                "depth": path.depth,
                "depth_share_threshold": round(path.share_threshold, 6),
                "edge_method": path.edge_method,
            },
            "fidelity": {**asdict(self.fidelity), "unverified_masks": list(self.fidelity.unverified_masks)},
            "masked_heads": [f"{m.layer}.{m.head}" for m in self.masked_heads],
            "mask_levels": {f"{m.layer}.{m.head}": m.level for m in self.masked_heads},
            "masked_features": [m.feature for m in self.masked_features],
            "sampling": asdict(self.sampling),
            "stopped_on_eos": self.stopped_on_eos,
            "activity_method": self.activity_method,
            "warnings": list(self.warnings),
        }


def generate(handle: ModelHandle, prompt: str, max_new_tokens: int = 20, masks=(),
             sampling: Sampling = Sampling()) -> str:
    """Plain generation (masks still apply); returns the generated text."""
    masks = normalize_masks(masks, handle.arch)
    ids, _ = encode_prompt(handle, prompt, reserve=max_new_tokens)
    out = decode(handle, ids, max_new_tokens, mask_fns(masks), sampling)
    return handle.tokenizer.decode(out.ids)


def trace(handle: ModelHandle, prompt: str, max_new_tokens: int = 20, masks=(),
          sampling: Sampling = Sampling(), capture_attention: bool = True, top_k: int = 10,
          progress: Progress | None = None,
          on_generated: Callable[[Generation], None] | None = None) -> TraceResult:
    """Generate from the prompt, reading every head's activity and attention at the positions that
    predicted the generated tokens, in the very passes that chose them.

    The readers only copy (masks run first, so a masked head reads 0) and the attention readers ask for
    the predicting row alone, so generation keeps its fused attention; `on_generated` sees the tokens as
    soon as they are chosen. Then fidelity is checked (see Fidelity): one forward pass over the
    predicting positions must give the logits generation chose from, and every masked head must have
    read exactly 0.
    """
    arch = handle.arch
    masks = normalize_masks(masks, arch)
    input_ids, warnings = encode_prompt(handle, prompt, reserve=max_new_tokens)
    capture = StepCapture(arch.n_layers, masks, capture_attention, query_layers(handle.model, arch.n_layers))
    decoded = decode(handle, input_ids, max_new_tokens, merge_fns(mask_fns(masks), capture.fns()), sampling,
                     progress)  # masks first
    n_steps = len(decoded.ids)
    generation = Generation(
        generated_ids=tuple(decoded.ids), generated_tokens=tuple(token_strings(handle, decoded.ids)),
        generated_text=handle.tokenizer.decode(decoded.ids), sampled_probs=decoded.sampled_probs,
        model_probs=decoded.model_probs, stopped_on_eos=decoded.stopped_on_eos)
    if on_generated:
        on_generated(generation)
    if progress:
        progress(n_steps, n_steps, "checking fidelity")
    step_activity = capture.activity(arch)
    attention = capture.attention(input_ids.shape[1] + n_steps - 1, decoded.cache) if capture_attention else None
    fidelity = check_fidelity(handle, input_ids[0], decoded, masks, capture.unverified(masks))
    head_activity = step_activity.mean(axis=0)
    return TraceResult(
        model=handle.name,
        fingerprint=handle.fingerprint,
        prompt=prompt,
        prompt_ids=tuple(int(i) for i in input_ids[0]),
        prompt_tokens=tuple(token_strings(handle, input_ids[0])),
        generated_ids=generation.generated_ids,
        generated_tokens=generation.generated_tokens,
        generated_text=generation.generated_text,
        sampled_probs=generation.sampled_probs,
        model_probs=generation.model_probs,
        step_activity=step_activity,
        head_activity=head_activity,
        attention=attention,
        top_heads=top_heads(head_activity, top_k),
        thought_path=thought_path(handle, head_activity),
        fidelity=fidelity,
        masked_heads=tuple(m for m in masks if isinstance(m, HeadMask)),
        masked_features=tuple(m for m in masks if isinstance(m, FeatureMask)),
        sampling=sampling,
        stopped_on_eos=decoded.stopped_on_eos,
        warnings=tuple(warnings),
    )


# model -> {(layer_a, head_a, layer_b, head_b): (kind, score)}: composition depends on the weights alone,
# so a pair seen on one trace's path is not computed again (the weights are frozen while a model is served)
_EDGES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def top_heads(head_activity: np.ndarray, k: int) -> tuple[HeadScore, ...]:
    """The k heads with the largest score in a (layer, head) array, largest first."""
    flat = np.argsort(head_activity, axis=None, kind="stable")[::-1][:k]
    n_heads = head_activity.shape[1]
    return tuple(HeadScore(int(i // n_heads), int(i % n_heads), float(head_activity.flat[i])) for i in flat)


def thought_path(handle: ModelHandle, head_activity: np.ndarray) -> ThoughtPath:
    """Chain the most active head of every layer; edges carry composition scores as EDGE_METHOD says.

    head_activity: (layer, head). The depth counts path heads whose share of their layer's activity
    exceeds DOMINANT_FACTOR / n_heads."""
    heads = []
    for layer, row in enumerate(head_activity):
        head, total = int(row.argmax()), float(row.sum())
        heads.append(PathHead(layer, head, float(row[head]), float(row[head]) / total if total > 0 else 0.0))
    labels = [f"L{h.layer}.H{h.head}" for h in heads]
    edges = [PathEdge("Prompt_Ingress", labels[0], None, "ingress")]
    weights: dict = {}
    known = _EDGES.setdefault(handle.model, {})
    for a, b, la, lb in zip(heads, heads[1:], labels, labels[1:]):
        pair = (a.layer, a.head, b.layer, b.head)
        if pair not in known:
            scores = composition_scores(handle.arch, a.layer, b.layer, weights, [a.head], [b.head])
            known[pair] = max(((k, float(v[0, 0])) for k, v in scores.items()), key=lambda kv: kv[1])
        kind, value = known[pair]
        edges.append(PathEdge(la, lb, round(value, 6), kind))
    edges.append(PathEdge(labels[-1], "Response_Egress", None, "egress"))
    return ThoughtPath(nodes=("Prompt_Ingress", *labels, "Response_Egress"), heads=tuple(heads), edges=tuple(edges),
                       share_threshold=DOMINANT_FACTOR / head_activity.shape[1])
