"""Traced generation: which heads were active for each generated token, and where they looked."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..arch.spec import HeadMask, normalize_masks
from ..hooks.dispatch import hooks
from ..hooks.masking import mask_fns, merge_fns
from ..model.generation import Decoded, Progress, Sampling, decode
from ..model.loading import ModelHandle
from ..model.tokens import encode_prompt, token_strings
from .composition import composition_scores

ACTIVITY_METHOD = "L2 norm of the head's output (its slice of the output projection's input) at the predicting position"
EDGE_METHOD = (
    "head-to-head edges: the largest of the Q-, K- and V-composition scores of the two heads' weights "
    "(layer norms left out); Prompt_Ingress/Response_Egress edges: the head's share of its layer's activity"
)


@dataclass(frozen=True)
class HeadScore:
    layer: int
    head: int
    score: float


@dataclass(frozen=True)
class PathEdge:
    source: str
    target: str
    weight: float
    kind: str  # "q", "k", "v" composition, or "activity_share"


@dataclass(frozen=True)
class ThoughtPath:
    """The most active head of each layer, chained from Prompt_Ingress to Response_Egress."""

    nodes: tuple[str, ...]  # "Prompt_Ingress", "L0.H3", ..., "Response_Egress"
    heads: tuple[HeadScore, ...]  # the head on the path in each layer, with its activity
    edges: tuple[PathEdge, ...]
    edge_method: str = EDGE_METHOD

    @property
    def depth(self) -> int:
        """Number of hops from Prompt_Ingress to Response_Egress."""
        return len(self.edges)


@dataclass(frozen=True)
class Fidelity:
    """How faithfully the traced run reproduces the same model run without any capture hooks.

    The whole sequence is re-run once (masks on, capture off, no KV cache) and its logits at each
    predicting position are compared with the logits the traced generation chose from."""

    token_agreement: float  # fraction of generated tokens that are also the re-run's argmax
    max_logit_diff: float  # largest absolute logit difference over all steps and the vocabulary


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
    token_probs: tuple[float, ...]  # probability of each generated token when it was chosen
    step_activity: np.ndarray  # (step, layer, head)
    head_activity: np.ndarray  # (layer, head): mean over steps
    attention: np.ndarray | None  # (step, layer, head, k_pos): the predicting position's attention; None when not captured
    top_heads: tuple[HeadScore, ...]
    thought_path: ThoughtPath
    fidelity: Fidelity
    masked_heads: tuple[HeadMask, ...]
    sampling: Sampling
    stopped_on_eos: bool
    warnings: tuple[str, ...] = ()
    activity_method: str = ACTIVITY_METHOD

    @property
    def n_layers(self) -> int:
        return self.head_activity.shape[0]

    def headline(self) -> str:
        """One line for the History list."""
        top = self.top_heads[0] if self.top_heads else None
        return f"\u2192 {self.generated_text!r}" + (f" \u00b7 most active head {top.layer}.{top.head}" if top else "")

    def to_json(self) -> dict:
        """The CLI's --json object (plus a few fields); plain lists and numbers only."""
        return {
            "model": self.model,
            "fingerprint": self.fingerprint,
            "prompt": self.prompt,
            "prompt_tokens": list(self.prompt_tokens),
            "generated_tokens": list(self.generated_tokens),
            "generated_text": self.generated_text,
            "token_probs": [round(p, 6) for p in self.token_probs],
            "head_activity": np.round(self.head_activity, 6).tolist(),
            "top_heads": [asdict(h) for h in self.top_heads],
            "thought_path": {
                "nodes": list(self.thought_path.nodes),
                "edges": [asdict(e) for e in self.thought_path.edges],
                "depth": self.thought_path.depth,
                "edge_method": self.thought_path.edge_method,
            },
            "fidelity": asdict(self.fidelity),
            "masked_heads": [f"{m.layer}.{m.head}" for m in self.masked_heads],
            "mask_levels": {f"{m.layer}.{m.head}": m.level for m in self.masked_heads},
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
          progress: Progress | None = None) -> TraceResult:
    """Generate from the prompt while recording every head's activity and attention.

    Activity and attention are read at the position that predicts each generated token. Masked
    heads are switched off before the activity is read, so a masked head reads 0.
    """
    arch = handle.arch
    masks = normalize_masks(masks, arch)
    input_ids, warnings = encode_prompt(handle, prompt, reserve=max_new_tokens)
    n_prompt = input_ids.shape[1]
    activity = [[] for _ in range(arch.n_layers)]  # per layer, per step: (head,)
    patterns = [[] for _ in range(arch.n_layers)]  # per layer, per step: (head, k_pos)

    def read_z(layer):
        def fn(z):  # (batch, pos, head, d_head)
            activity[layer].append(z[0, -1].float().norm(dim=-1).cpu())
        return fn

    def read_pattern(layer):
        def fn(probs):  # (batch, head, q_pos, k_pos)
            patterns[layer].append(probs[0, :, -1].float().cpu())
        fn.last_row = True  # lets the layer keep its fused attention kernel
        return fn

    capture = {(layer, "attn.z"): [read_z(layer)] for layer in range(arch.n_layers)}
    if capture_attention:
        capture.update({(layer, "attn.pattern"): [read_pattern(layer)] for layer in range(arch.n_layers)})
    fns = merge_fns(mask_fns(masks), capture)  # masks first: a masked head reads 0
    decoded = decode(handle, input_ids, max_new_tokens, fns, sampling, progress)
    n_steps = len(decoded.ids)

    step_activity = torch.stack([torch.stack(per_layer) for per_layer in activity], dim=1).numpy()
    attention = None
    if capture_attention:
        attention = np.zeros((n_steps, arch.n_layers, arch.n_heads, n_prompt + n_steps - 1), dtype=np.float32)
        for layer, rows in enumerate(patterns):
            for step, row in enumerate(rows):
                attention[step, layer, :, : row.shape[-1]] = row.numpy()
    head_activity = step_activity.mean(axis=0)
    probs = torch.softmax(decoded.step_logits, dim=-1)
    token_probs = tuple(float(probs[i, t]) for i, t in enumerate(decoded.ids))
    if progress:
        progress(n_steps, n_steps, "checking trace fidelity")
    return TraceResult(
        model=handle.name,
        fingerprint=handle.fingerprint,
        prompt=prompt,
        prompt_ids=tuple(int(i) for i in input_ids[0]),
        prompt_tokens=tuple(token_strings(handle, input_ids[0])),
        generated_ids=tuple(decoded.ids),
        generated_tokens=tuple(token_strings(handle, decoded.ids)),
        generated_text=handle.tokenizer.decode(decoded.ids),
        token_probs=token_probs,
        step_activity=step_activity,
        head_activity=head_activity,
        attention=attention,
        top_heads=top_heads(head_activity, top_k),
        thought_path=thought_path(handle, head_activity),
        fidelity=_fidelity(handle, input_ids, decoded, masks),
        masked_heads=masks,
        sampling=sampling,
        stopped_on_eos=decoded.stopped_on_eos,
        warnings=tuple(warnings),
    )


def top_heads(head_activity: np.ndarray, k: int) -> tuple[HeadScore, ...]:
    """The k heads with the largest score in a (layer, head) array, largest first."""
    flat = np.argsort(head_activity, axis=None)[::-1][:k]
    n_heads = head_activity.shape[1]
    return tuple(HeadScore(int(i // n_heads), int(i % n_heads), float(head_activity.flat[i])) for i in flat)


def thought_path(handle: ModelHandle, head_activity: np.ndarray) -> ThoughtPath:
    """Chain the most active head of every layer, weighting edges as EDGE_METHOD says."""
    heads = tuple(HeadScore(layer, int(row.argmax()), float(row.max())) for layer, row in enumerate(head_activity))
    labels = [f"L{h.layer}.H{h.head}" for h in heads]
    shares = [h.score / max(float(head_activity[h.layer].sum()), 1e-12) for h in heads]
    edges = [PathEdge("Prompt_Ingress", labels[0], round(shares[0], 6), "activity_share")]
    weights: dict = {}
    for a, b, la, lb in zip(heads, heads[1:], labels, labels[1:]):
        scores = composition_scores(handle.arch, a.layer, b.layer, weights, [a.head], [b.head])
        kind, value = max(((k, float(v[0, 0])) for k, v in scores.items()), key=lambda kv: kv[1])
        edges.append(PathEdge(la, lb, round(value, 6), kind))
    edges.append(PathEdge(labels[-1], "Response_Egress", round(shares[-1], 6), "activity_share"))
    return ThoughtPath(nodes=("Prompt_Ingress", *labels, "Response_Egress"), heads=heads, edges=tuple(edges))


def _fidelity(handle: ModelHandle, input_ids: torch.Tensor, decoded: Decoded, masks) -> Fidelity:
    full = torch.cat([input_ids[0], torch.tensor(decoded.ids[:-1], dtype=input_ids.dtype, device=input_ids.device)])
    with torch.inference_mode(), hooks(handle.model, handle.arch, mask_fns(masks)):
        logits = handle.model(input_ids=full[None], logits_to_keep=len(decoded.ids)).logits[0].float().cpu()
    agree = (logits.argmax(-1) == torch.tensor(decoded.ids)).float().mean()
    return Fidelity(token_agreement=float(agree), max_logit_diff=float((logits - decoded.step_logits).abs().max()))
