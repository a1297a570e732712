"""A sweep over a prompt set: one operation applied to every head (or every layer's components, or
each of a list of SAE features) on each prompt of a set, and the map of mean effects over the set.

Each prompt is an ordinary batched sweep (sweep.py); the set's result keeps every prompt's map and
averages them in prompt order. `summarize_prompt_sweep` is the only place the average is taken, so
a set swept in shards on other processes (synapse_core.jobs) gives the same numbers as one swept here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..common.errors import BadInput
from ..model.generation import Progress
from ..model.loading import ModelHandle
from .ops import OpSettings
from .promptset import PromptCase, prompt_set_metric
from .sweep import BATCH_ROWS, SweepResult, sweep_features, sweep_heads, sweep_layers


@dataclass(frozen=True, eq=False)
class PromptSetSweep:
    """One sweep per prompt of a set, and their mean."""

    cases: tuple[PromptCase, ...]
    sweeps: tuple[SweepResult, ...]  # one per case, in case order
    mean_effects: np.ndarray  # float32, the shape of each sweep's effects: (layer, head) or (site, layer)
    mean_kl: np.ndarray  # float32, same shape: mean KL(clean || intervened) over the prompts

    @property
    def kind(self) -> str:
        return self.sweeps[0].kind

    @property
    def metric(self) -> str:
        return self.sweeps[0].metric

    @property
    def masks(self):
        return self.sweeps[0].masks

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for s in self.sweeps for n in s.notes))

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w for s in self.sweeps for w in s.warnings))

    def name(self, i: int, j: int) -> str:
        return self.sweeps[0].name(i, j)

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The k components with the largest mean |effect|: (name, mean effect)."""
        order = np.argsort(-np.abs(self.mean_effects), axis=None, kind="stable")[:k]
        cells = [np.unravel_index(int(i), self.mean_effects.shape) for i in order]
        return [(self.name(int(i), int(j)), float(self.mean_effects[i, j])) for i, j in cells]

    def headline(self) -> str:
        name, effect = self.top(1)[0]
        return f"largest mean effect {effect:+.4g} at {name} over {len(self.cases)} prompts"

    def prompt_rows(self) -> list[dict]:
        """One dict per prompt, in set order: the clean value and each component's value and effect
        ((layer, head) or (site, layer) nested lists)."""
        return [{"prompt": c.prompt, "target": c.target, "contrast": c.contrast, "clean": s.clean,
                 "ablated": s.values.tolist(), "effect": s.effects.tolist()} for c, s in zip(self.cases, self.sweeps)]

    def csv_rows(self) -> list[dict]:
        """One row per component: its mean effect and mean KL over the set."""
        rows = []
        for i, j in np.ndindex(self.mean_effects.shape):
            rows.append({"name": self.name(i, j), "mean_effect": float(self.mean_effects[i, j]),
                         "mean_kl": float(self.mean_kl[i, j])})
        return rows

    def to_json(self) -> dict:
        first = self.sweeps[0]
        return {
            "model": first.model, "fingerprint": first.fingerprint, "kind": self.kind, "sites": list(first.sites),
            "features": list(first.features),
            "op": first.op, "metric": self.metric, "prompts": self.prompt_rows(),
            "mean_effects": self.mean_effects.tolist(), "mean_kl": self.mean_kl.tolist(),
            "masks": [asdict(m) for m in self.masks], "settings": asdict(first.settings),
            "notes": list(self.notes), "warnings": list(self.warnings),
        }


def summarize_prompt_sweep(cases, sweeps) -> PromptSetSweep:
    """The set's result from its per-prompt sweeps, in case order (the mean is summed in that order)."""
    cases, sweeps = tuple(cases), tuple(sweeps)
    if not sweeps or len(cases) != len(sweeps):
        raise BadInput(f"{len(cases)} prompts and {len(sweeps)} sweeps: give one sweep per prompt")
    effects = np.zeros(sweeps[0].effects.shape, dtype=np.float64)
    kl = np.zeros_like(effects)
    for s in sweeps:
        effects += s.effects
        kl += s.kl
    n = len(sweeps)
    return PromptSetSweep(cases, sweeps, (effects / n).astype(np.float32), (kl / n).astype(np.float32))


def sweep_cases(handle: ModelHandle, cases, sites=("attn.head",), op: str = "zero", positions="all",
                source: str | None = None, metric: str | None = None, masks=(), settings: OpSettings = OpSettings(),
                batch_rows: int = BATCH_ROWS, progress: Progress | None = None,
                features: tuple[int, ...] = ()) -> list[SweepResult]:
    """One sweep per case, in order; sites ("attn.head",) sweeps every head; with `features`, sites is
    (the SAE's name,) and those features are zeroed in turn; else those layer sites."""
    out = []
    cases = tuple(cases)
    for i, case in enumerate(cases):
        common = dict(op=op, positions=positions, source=source, metric=metric, masks=masks, settings=settings,
                      batch_rows=batch_rows)
        if features:
            if op != "zero":
                raise BadInput(f"a feature sweep zeroes each feature: op {op!r} is not offered")
            out.append(sweep_features(handle, case.prompt, case.target, sites[0], features, case.contrast, positions,
                                      metric, masks, batch_rows))
        elif tuple(sites) == ("attn.head",):
            out.append(sweep_heads(handle, case.prompt, case.target, case.contrast, **common))
        else:
            out.append(sweep_layers(handle, case.prompt, case.target, case.contrast, sites=tuple(sites), **common))
        if progress:
            progress(i + 1, len(cases), case.prompt[:40])
    return out


def sweep_prompt_set(handle: ModelHandle, cases, sites=("attn.head",), op: str = "zero", positions="all",
                     source: str | None = None, metric: str | None = None, masks=(),
                     settings: OpSettings = OpSettings(), batch_rows: int = BATCH_ROWS,
                     progress: Progress | None = None) -> PromptSetSweep:
    """Sweep every head (or layer site) on each case and average the maps over the set.

    >>> sweep_prompt_set(handle, parse_prompt_lines("The capital of France is | Paris")).mean_effects.shape
    (30, 9)
    """
    cases = tuple(cases)
    if not cases:
        raise BadInput("the prompt set is empty")
    metric = prompt_set_metric(cases, metric)  # one metric for every prompt, so the maps can be averaged
    return summarize_prompt_sweep(cases, sweep_cases(handle, cases, sites, op, positions, source, metric, masks,
                                                     settings, batch_rows, progress))
