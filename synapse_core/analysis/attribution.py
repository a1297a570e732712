"""Attribution patching: every head's ablation effect estimated from one forward and one backward pass.

For a metric m and a head output z (its slice of the attention output projection's input, hook site
attn.z), zero ablation changes z by delta = 0 - z. To first order the metric then changes by

    estimate = sum over pos and d_head of  dm/dz * (0 - z)

(Nanda, "Attribution Patching"; Kramár et al., "AtP*"). The gradient of m with respect to every
head's z comes from one backward pass, so the whole model is ranked in about the time of a
forward-backward instead of one forward pass per head. The estimate is exact where m is linear in
z (a head whose output reaches the logits through nothing but linear maps) and can miss heads whose
removal changes later attention patterns a lot (typically early layers); discovery therefore
verifies its candidates by real ablation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hooks.dispatch import hooks
from ..hooks.masking import mask_fns, merge_fns
from ..interventions.metrics import Target
from ..model.loading import ModelHandle

METHOD = "attribution patching: d metric / d z (attn.z) times (0 - z), summed over positions and d_head"
RANKED_METRICS = ("logit_diff", "log_prob")


def metric_values(logits: torch.Tensor, target: Target, metric: str) -> torch.Tensor:
    """The discovery metric of last-position logits (batch, d_vocab) -> (batch,), differentiable.

    logit_diff: logit(target) - logit(contrast); log_prob: log p(target).
    """
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half precision models: score in float32
    if metric == "logit_diff":
        return logits[:, target.id] - logits[:, target.contrast_id]
    if metric == "log_prob":
        return torch.log_softmax(logits, dim=-1)[:, target.id]
    raise ValueError(f"discovery ranks by {' or '.join(RANKED_METRICS)}, not {metric!r}")


@dataclass(frozen=True, eq=False)
class Attribution:
    """Attribution-patching estimates of one prompt."""

    estimates: torch.Tensor  # (layer, head) estimated metric change when each head is zero-ablated, float32
    clean_logits: torch.Tensor  # (d_vocab,) last-position logits of the clean run (masks on), float32
    clean: float  # the metric of the clean run
    scores: torch.Tensor | None = None  # (layer, head) ranking score when it is not |estimates| (AtP*'s GradDrop)

    @property
    def ranking(self) -> torch.Tensor:
        """(layer, head): larger ranks first."""
        return self.estimates.abs() if self.scores is None else self.scores


def attribute_heads(handle: ModelHandle, ids: torch.Tensor, target: Target, metric: str, masks=()) -> Attribution:
    """Estimate the effect of zero-ablating each head on `metric`, for the prompt ids (1, pos).

    One forward pass with a zero tensor that requires grad added to every head output z, one backward
    pass from the metric to all of them. Masked heads have z = 0, so their estimate is 0. The masks' site
    functions run before the leaf is taken, so the clean run is the masked model's.
    """
    arch = handle.arch
    seen: dict[int, torch.Tensor] = {}  # layer -> z (batch, pos, head, d_head) of the clean run
    deltas: dict[int, torch.Tensor] = {}  # layer -> a zero leaf added to z; its gradient is dm/dz

    def leaf(layer: int):
        # z + 0 rather than a detached z: detaching would cut the paths from earlier heads through this
        # layer's queries, keys and values, and their gradients would miss those paths
        def fn(z):
            delta = torch.zeros_like(z, requires_grad=True)
            seen[layer], deltas[layer] = z.detach(), delta
            return z + delta

        return fn

    table = merge_fns(mask_fns(tuple(masks)), {(layer, "attn.z"): [leaf(layer)] for layer in range(arch.n_layers)})
    # inference_mode(False): a caller inside inference mode (a page, a test) would otherwise get no graph
    with torch.inference_mode(False), torch.enable_grad(), hooks(handle.model, arch, table):
        logits = handle.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]
        value = metric_values(logits, target, metric)[0]
        layers = range(arch.n_layers)
        grads = torch.autograd.grad(value, [deltas[layer] for layer in layers])
    with torch.no_grad():
        # (0 - z) * dm/dz summed over batch, pos and d_head -> (head,) per layer
        estimates = torch.stack([-(g * seen[layer]).sum(dim=(0, 1, 3)) for layer, g in zip(layers, grads)])
    estimates = estimates.float().cpu()
    return Attribution(estimates=estimates, clean_logits=logits[0].detach().float(), clean=float(value.detach()))
