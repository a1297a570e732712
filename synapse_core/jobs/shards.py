"""How a job's cases are cut into shards: contiguous slices, so results gather back in case order."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """A contiguous slice of a job's cases: the unit a worker runs and a retry repeats."""

    index: int  # position among the job's shards
    start: int  # index of its first case in the job
    cases: tuple


def split(cases, shard_size: int) -> list[Shard]:
    """Contiguous shards of at most shard_size cases, in order.

    >>> [len(s.cases) for s in split(range(10), 4)]
    [4, 4, 2]
    """
    cases = tuple(cases)
    return [Shard(i, start, cases[start:start + shard_size])
            for i, start in enumerate(range(0, len(cases), shard_size))]


def default_shard_size(n_cases: int, n_actors: int) -> int:
    """About four shards an actor: small enough that a slow or restarted actor does not hold the
    job's tail, large enough that per-task overhead stays small against a forward pass."""
    return max(1, -(-n_cases // (4 * max(1, n_actors))))
