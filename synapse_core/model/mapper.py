"""How a long computation is spread over the cases it runs on (prompts, batches of contexts,
batches of text windows), without the computation knowing where it runs.

A shard function is a module-level function (a Ray worker imports it by name)

    fn(handle, cases, progress=None, **params) -> one result per case, in case order

and a Mapper applies one to every case and returns the results in case order:

    mapper(fn, cases, params, progress=None) -> list

`local_mapper` calls fn once over every case in this process, as a single run does; the job engine
(jobs.engine.mapper) may instead cut the cases into shards and run them on a pool of Ray actors.
Code below the job engine (analysis, features) takes a Mapper and so runs on either engine
unchanged, with one result whichever ran it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .generation import Progress
from .loading import ModelHandle


@dataclass(frozen=True)
class Mapper:
    """Applies shard functions to cases somewhere (see the module docstring)."""

    run: Callable[..., list]  # (fn, cases: tuple, params: dict | None, progress: Progress | None) -> list
    # how many cases a caller that streams its cases (a harvest) should hand over a call: 1 here, enough
    # to keep every actor of a pool busy on Ray; results are the same whatever it is
    cases_per_call: int = 1

    def __call__(self, fn: Callable, cases, params: dict | None = None, progress: Progress | None = None) -> list:
        cases = tuple(cases)
        out = self.run(fn, cases, dict(params or {}), progress)
        assert len(out) == len(cases), f"{len(out)} results for {len(cases)} cases"
        return out


def local_mapper(handle: ModelHandle) -> Mapper:
    """The in-process Mapper: one call of the shard function over every case.

    >>> local_mapper(handle)(shard_fn, cases, {"masks": ()})
    """
    return Mapper(lambda fn, cases, params, progress: list(fn(handle, cases, progress=progress, **params)))


def stage_progress(report: Callable[[str, int, int], None] | None, stage: str) -> Progress | None:
    """A shard function's progress (done, total, message) as a staged report(stage, done, total)."""
    if report is None:
        return None
    return lambda done, total, message="": report(stage, done, total)
