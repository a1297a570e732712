"""Prompt-set jobs on either engine: evaluating an intervention over a prompt set and sweeping every
head (or layer site) over a prompt set. (Discovery over a prompt set, activation harvesting and cost
reports take the engine as a model.mapper.Mapper: engine.mapper.)

Each job is a module-level shard function (what a worker runs on a slice of the cases) and a
driver function that runs it through `run_job` and builds the result from the per-case results in
case order with the same summary the single-process code uses, so both engines give one result.
"""
from __future__ import annotations

from ..arch.spec import normalize_masks
from ..common.errors import BadInput
from ..interventions.ops import OpSettings
from ..interventions.promptset import PromptSetResult, evaluate_prompt_set, prompt_set_metric, summarize_prompt_set
from ..interventions.promptsweep import PromptSetSweep, summarize_prompt_sweep, sweep_cases
from ..interventions.sweep import BATCH_ROWS
from ..model.generation import Progress
from ..model.loading import ModelHandle
from .config import EngineConfig
from .engine import Cancel, run_job


def promptset_shard(handle: ModelHandle, cases, progress: Progress | None = None, *, interventions, masks,
                    settings, metric, top_k) -> list:
    """(PromptRow, the interventions as carried out) for each case of a shard."""
    r = evaluate_prompt_set(handle, cases, interventions, masks, settings, metric, top_k, progress)
    return [(row, r.interventions) for row in r.rows]


def run_prompt_set(handle: ModelHandle, cases, interventions, masks=(), settings: OpSettings = OpSettings(),
                   metric: str | None = None, top_k: int = 5, engine: EngineConfig | None = None,
                   progress: Progress | None = None, cancel: Cancel | None = None) -> PromptSetResult:
    """evaluate_prompt_set on the chosen engine: the same result on every engine.

    >>> run_prompt_set(handle, cases, [parse_intervention("layers.3.attn.head.1", "zero")],
    ...                engine=EngineConfig("ray", ray_actors=2)).mean_change
    """
    cases = tuple(cases)
    if not cases:
        raise BadInput("the prompt set is empty")
    metric = prompt_set_metric(cases, metric)
    masks = normalize_masks(masks, handle.arch)
    params = dict(interventions=tuple(interventions), masks=masks, settings=settings, metric=metric, top_k=top_k)
    out = run_job(handle, promptset_shard, cases, params, engine, progress, cancel)
    return summarize_prompt_set(handle.name, handle.fingerprint, out[-1][1], settings, masks, metric,
                                [row for row, _ in out])


def sweep_shard(handle: ModelHandle, cases, progress: Progress | None = None, **params) -> list:
    """One SweepResult for each case of a shard."""
    return sweep_cases(handle, cases, progress=progress, **params)


def run_prompt_sweep(handle: ModelHandle, cases, sites=("attn.head",), op: str = "zero", positions="all",
                     source: str | None = None, metric: str | None = None, masks=(),
                     settings: OpSettings = OpSettings(), batch_rows: int = BATCH_ROWS,
                     engine: EngineConfig | None = None, progress: Progress | None = None,
                     cancel: Cancel | None = None, features: tuple[int, ...] = ()) -> PromptSetSweep:
    """sweep_prompt_set on the chosen engine: one sweep per prompt, mean effects over the set
    (features: zero those features of the SAE named by sites[0] in turn, as sweep_features does)."""
    cases = tuple(cases)
    if not cases:
        raise BadInput("the prompt set is empty")
    params = dict(sites=tuple(sites), op=op, positions=positions, source=source,
                  metric=prompt_set_metric(cases, metric), masks=tuple(masks), settings=settings,
                  batch_rows=batch_rows, features=tuple(features))
    return summarize_prompt_sweep(cases, run_job(handle, sweep_shard, cases, params, engine, progress, cancel))
