"""One job interface, two engines. A job is a shard function applied to a tuple of cases (prompts):

    fn(handle, cases, progress=None, **params) -> one result per case, in case order

`run_job` runs it in this process (engine local: one call over every case, as a single run does)
or splits the cases into contiguous shards and hands them to a pool of Ray actors, each holding
the model (engine ray, raypool.py). Either way the results come back as one list in case order,
so whatever is built from them (an aggregate, an experiment) is the same.

Progress is reported as (done, total, message) in cases; `cancel` is polled while the job runs
and stops it with JobCancelled.
"""
from __future__ import annotations

from collections.abc import Callable

from ..model.generation import Progress
from ..model.loading import ModelHandle
from ..model.mapper import Mapper, local_mapper
from .config import EngineConfig, JobCancelled

Cancel = Callable[[], bool]  # returns True once the job should stop


def _checked(progress: Progress | None, cancel: Cancel | None) -> Progress | None:
    if cancel is None:
        return progress

    def report(done, total, message):
        if cancel():
            raise JobCancelled(f"cancelled after {done} of {total}")
        if progress:
            progress(done, total, message)

    return report


def run_job(handle: ModelHandle, fn: Callable, cases, params: dict | None = None,
            engine: EngineConfig | None = None, progress: Progress | None = None,
            cancel: Cancel | None = None) -> list:
    """Apply the shard function `fn` to every case on the chosen engine; one result per case, in order.

    fn must be a module-level function (Ray workers import it by name). params must pickle.
    Raises JobCancelled when cancel() turns true, JobError when the engine cannot run the job.
    """
    cases = tuple(cases)
    params = dict(params or {})
    engine = engine or EngineConfig()
    if cancel is not None and cancel():
        raise JobCancelled("cancelled before it started")
    if engine.engine == "local":
        out = local_mapper(handle)(fn, cases, params, _checked(progress, cancel))
    else:
        from .raypool import run_on_ray

        out = run_on_ray(handle, fn, cases, params, engine, progress, cancel)
    assert len(out) == len(cases), f"{len(out)} results for {len(cases)} cases"
    return out


def mapper(handle: ModelHandle, engine: EngineConfig | None = None, cancel: Cancel | None = None) -> Mapper:
    """A model.mapper.Mapper that runs every shard function through run_job on `engine`: what the
    analysis and features code (discovery, harvesting, text scoring) is handed to run on Ray."""
    engine = engine or EngineConfig()
    per_call = 1 if engine.engine == "local" else 4 * (engine.ray_actors or 2)  # about four shards an actor
    return Mapper(lambda fn, cases, params, progress: run_job(handle, fn, cases, params, engine, progress, cancel),
                  cases_per_call=per_call)
