"""Which engine runs a long job, and with what: read from CLI flags, the environment or
.streamlit/secrets.toml, in that order of precedence.

SYNAPSE_ENGINE            local (default: in this process, as a single run) or ray
SYNAPSE_RAY_ADDRESS       an existing cluster: ray://head:10001 (Ray Client), host:6379, or auto;
                          unset: a local cluster on this machine (or the one this process already joined)
SYNAPSE_RAY_ACTORS        model actors in the pool (default: one per GPU of the cluster, else 2)
SYNAPSE_RAY_CPUS_PER_ACTOR  CPUs each actor reserves (default 1; also its torch threads)
SYNAPSE_RAY_GPUS_PER_ACTOR  GPUs each actor reserves (default 1 when the cluster has GPUs, else 0)

secrets.toml takes the same keys at top level, or lower-case in a [jobs] section:

    [jobs]
    engine = "ray"
    ray_address = "ray://head:10001"
    ray_actors = 4
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..common.errors import BadInput, SynapseError

ENGINES = ("local", "ray")
_KEYS = ("engine", "ray_address", "ray_actors", "ray_cpus_per_actor", "ray_gpus_per_actor")


class JobError(SynapseError):
    """A job could not run on its engine: the cluster is unreachable, a worker lacks the model, ..."""


class JobCancelled(SynapseError):
    """The job was cancelled before it finished; nothing of it was stored."""


@dataclass(frozen=True)
class EngineConfig:
    """Where a job runs. The engine never changes a result or its experiment hash, only where it is computed."""

    engine: str = "local"  # local | ray
    ray_address: str | None = None  # None: a local cluster (or the one already joined); "auto"; "ray://h:p"; "h:p"
    ray_actors: int | None = None  # None: one per GPU of the cluster, else 2
    cpus_per_actor: float = 1.0  # CPUs each actor reserves; its torch thread count too
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    shard_size: int | None = None  # prompts a task; None: about four shards an actor (load balance vs overhead)
    max_restarts: int = 3  # a dead actor is restarted (and loads the model again) this many times
    max_task_retries: int = 3  # a shard whose actor died is re-run this many times

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise BadInput(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.ray_actors is not None and self.ray_actors < 1:
            raise BadInput(f"ray actors {self.ray_actors}: give at least 1")
        if self.cpus_per_actor <= 0:
            raise BadInput(f"CPUs per actor {self.cpus_per_actor}: give a positive number")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise BadInput(f"GPUs per actor {self.gpus_per_actor}: give 0 or more")
        if self.shard_size is not None and self.shard_size < 1:
            raise BadInput(f"shard size {self.shard_size}: give at least 1 prompt")
        if min(self.max_restarts, self.max_task_retries) < 0:
            raise BadInput(f"max_restarts {self.max_restarts} / max_task_retries {self.max_task_retries}: "
                           "give 0 or more")


def _number(name: str, value, kind=int):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise BadInput(f"{name} {value!r} is not a number") from None


def _lookup(secrets: Mapping | None, key: str):
    """A key from the environment (SYNAPSE_<KEY>), else from secrets (top level, or [jobs] lower-case)."""
    env = os.environ.get("SYNAPSE_" + key.upper())
    if env not in (None, ""):
        return env
    if secrets is None:
        return None
    try:
        value = secrets.get("SYNAPSE_" + key.upper())
        if value in (None, ""):
            section = secrets.get("jobs") or {}
            value = section.get(key)
    except Exception:  # st.secrets raises when there is no secrets.toml at all
        return None
    return None if value in (None, "") else value


def engine_config(engine: str | None = None, ray_address: str | None = None, ray_actors: int | None = None,
                  secrets: Mapping | None = None, **overrides) -> EngineConfig:
    """The engine for a job: the arguments given (CLI flags, page widgets) win over the environment,
    which wins over secrets. Unknown engines and non-numbers are refused with BadInput.

    >>> engine_config("ray", ray_actors=2).engine
    'ray'
    """
    found = {key: _lookup(secrets, key) for key in _KEYS}
    given = {"engine": engine, "ray_address": ray_address, "ray_actors": ray_actors}
    for key, value in given.items():
        if value not in (None, ""):
            found[key] = value
    kwargs = dict(engine=str(found["engine"] or "local").strip().lower())
    if found["ray_address"]:
        kwargs["ray_address"] = str(found["ray_address"]).strip()
    if found["ray_actors"] is not None:
        kwargs["ray_actors"] = _number("ray actors", found["ray_actors"])
    if found["ray_cpus_per_actor"] is not None:
        kwargs["cpus_per_actor"] = _number("CPUs per actor", found["ray_cpus_per_actor"], float)
    if found["ray_gpus_per_actor"] is not None:
        kwargs["gpus_per_actor"] = _number("GPUs per actor", found["ray_gpus_per_actor"], float)
    kwargs.update(overrides)
    return EngineConfig(**kwargs)
