"""A circuit judged against random head sets: the circuit's heads ablated together, beside
`draws` random sets of the same size, on a list of prompts, with a verdict in words.

Discovery judges its circuit twice when it has a prompt set: on the prompts it was chosen on (in
sample) and on prompts held out of the choice (out of sample). With one prompt only the in-sample
judgement exists, and the verdict says so.

Effects are metric(ablated) - metric(clean), each against the clean row of its own batched pass
(circuit.head_set_scores). A circuit whose heads each lower the metric when ablated alone may raise
it when ablated together: the verdict then says that they interact, not "no better than random".
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..arch.spec import HeadRef
from ..interventions.metrics import Target
from ..model.loading import ModelHandle
from ..model.mapper import Mapper, local_mapper, stage_progress
from .discoshards import head_sets_shard

Report = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class CircuitEffect:
    """The discovered heads ablated together, against random head sets of the same size."""

    heads: tuple[HeadRef, ...]
    metric_before: float  # clean metric, mean over prompts
    metric_after: float  # with every circuit head ablated
    effect: float  # metric_after - metric_before
    effect_std: float  # spread over prompts
    target_rate_before: float  # fraction of prompts whose top-1 next token is the target
    target_rate_after: float
    random_mean: float  # mean effect of the random sets (each set's effect is its mean over prompts)
    random_std: float  # standard deviation over the draws
    random_target_rate: float  # target rate with a random set ablated, mean over draws
    random_effects: tuple[float, ...]  # one per draw
    random_sets: tuple[tuple[HeadRef, ...], ...]  # the drawn sets, reproducible from the seed
    seed: int
    beats_random: bool  # lowers the metric by more than the random mean drop + 2 standard deviations
    verdict: str
    prompts: tuple[int, ...] = (0,)  # which of the discovery's prompts it was judged on (indices)
    sum_of_singles: float = 0.0  # the circuit heads' verified single effects, summed (on the discovery prompts)
    interacts: bool = False  # the joint effect has the opposite sign of sum_of_singles: the heads interact

    def to_json(self) -> dict:
        return {"heads": [{"layer": r.layer, "head": r.head, "name": r.name} for r in self.heads], "prompts": list(self.prompts),
                "metric_before": self.metric_before, "metric_after": self.metric_after, "effect": self.effect,
                "effect_std": self.effect_std, "sum_of_singles": self.sum_of_singles, "interacts": self.interacts,
                "beats_random": self.beats_random, "verdict": self.verdict,
                "random_baseline": {"mean": self.random_mean, "std": self.random_std,
                                    "draws": len(self.random_effects), "seed": self.seed,
                                    "effects": list(self.random_effects), "target_rate": self.random_target_rate},
                "target_rate": {"before": self.target_rate_before, "after": self.target_rate_after}}


def interacting(effect: float, sum_of_singles: float, random_std: float) -> bool:
    """The joint effect points the other way from the sum of the single effects, both clearly non-zero
    (beyond the random sets' spread, so float noise around 0 is not called an interaction)."""
    floor = max(random_std, 1e-6)
    return effect * sum_of_singles < 0 and abs(effect) > floor and abs(sum_of_singles) > floor


def verdict(effect: float, mean: float, std: float, size: int, draws: int, metric: str,
            sum_of_singles: float = 0.0) -> tuple[bool, bool, str]:
    """(beats_random, interacts, the verdict in words) for a circuit's joint effect."""
    drop, random_drop = -effect, -mean
    if interacting(effect, sum_of_singles, std):
        way = "raise" if effect > 0 else "lower"
        alone = "lowers" if sum_of_singles < 0 else "raises"
        return False, True, (
            f"the heads interact: ablated together these {size} heads {way} {metric} by {abs(effect):.3g}, the "
            f"opposite of what they do alone (each {alone} it; their single effects sum to {sum_of_singles:+.3g}). "
            f"{draws} random {size}-head sets change it by {mean:+.3g} \u00b1 {std:.3g}; the pair results show "
            "which heads undo each other")
    beats = drop > 0 and drop > random_drop + 2 * std
    ratio = f", {drop / random_drop:.1f}x the random mean" if random_drop > 0 else ""
    if beats:
        return True, False, (f"the circuit lowers {metric} by {drop:.3g}{ratio}; {draws} random {size}-head sets "
                             f"lower it by {random_drop:.3g} \u00b1 {std:.3g}")
    return False, False, (f"no better than random: the circuit changes {metric} by {effect:+.3g}; {draws} random "
                          f"{size}-head sets change it by {mean:+.3g} \u00b1 {std:.3g}")


def judge_circuit(handle: ModelHandle, cases: Sequence[tuple[torch.Tensor, Target]], prompts: Sequence[int],
                  circuit: tuple[HeadRef, ...], random_sets, metric: str, masks, seed: int,
                  sum_of_singles: float, stage: str, report: Report, mapper: Mapper | None = None) -> CircuitEffect:
    """The circuit and each random set ablated on every prompt of `cases` ((ids (1, pos), target) each).

    prompts: the indices of these prompts among the discovery's, recorded in the result.
    report(stage, done, total) as prompts are done; mapper: where the prompts run (model.mapper).
    """
    n = len(cases)
    sets = [circuit, *random_sets]
    report(stage, 0, n)
    rows = (mapper or local_mapper(handle))(head_sets_shard, tuple(cases),
                                            {"sets": sets, "metric": metric, "masks": masks},
                                            stage_progress(report, stage))
    effect = np.stack([r[0] for r in rows]).reshape(n, len(sets))  # (prompt, set)
    on_target = np.stack([r[1] for r in rows]).reshape(n, len(sets))
    clean, clean_top = np.array([r[2] for r in rows]), np.array([r[3] for r in rows], dtype=np.int64)
    targets = [t for _, t in cases]
    draws = effect[:, 1:].mean(0)  # (draw,)
    joint = float(effect[:, 0].mean())
    beats, interacts, words = verdict(joint, float(draws.mean()), float(draws.std()), len(circuit), len(draws),
                                      metric, sum_of_singles)
    return CircuitEffect(
        heads=circuit, metric_before=float(clean.mean()), metric_after=float((clean + effect[:, 0]).mean()),
        effect=joint, effect_std=float(effect[:, 0].std()),
        target_rate_before=float(np.mean([int(top) == t.id for top, t in zip(clean_top, targets)])),
        target_rate_after=float(on_target[:, 0].mean()), random_mean=float(draws.mean()),
        random_std=float(draws.std()), random_target_rate=float(on_target[:, 1:].mean()),
        random_effects=tuple(float(d) for d in draws), random_sets=tuple(random_sets), seed=seed,
        beats_random=beats, verdict=words, prompts=tuple(int(p) for p in prompts),
        sum_of_singles=float(sum_of_singles), interacts=interacts)
