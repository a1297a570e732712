"""The ray engine: a pool of actors that each load the model once, fed shards of a job by Ray's
ActorPool, with Ray's own fault tolerance (no scheduler of ours).

- Connecting: an address is probed with a plain TCP connection first (3 s), so an unreachable
  cluster is an error within seconds, not a hang inside ray.init. Without an address a process that
  already joined a cluster uses it, else ray.init starts a local one on this machine.
- The pool: `ray_actors` actors (default one per GPU of the cluster, else 2), each reserving
  `cpus_per_actor` CPUs (its torch threads) and `gpus_per_actor` GPUs. Each loads the model by the
  driver's spec, device and dtype, and the driver checks that every worker holds the same weights
  (fingerprint) before any shard runs. Pools are kept per (cluster, model, resources) and reused.
- Faults: actors are created with max_restarts and max_task_retries, so a worker killed mid-shard
  is restarted (it loads the model again) and that shard re-run by Ray. Each shard's result is read
  once, from its one submission, and put at its own index: a retried shard is never counted twice.
- Cancellation: polled between results; it kills the pool's actors at once and raises JobCancelled.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import urlparse

from ..common.errors import SynapseError
from ..model.generation import Progress
from ..model.loading import ModelHandle
from .config import EngineConfig, JobCancelled, JobError
from .shards import default_shard_size, split

CONNECT_TIMEOUT_S = 3.0  # TCP probe of a cluster address
READY_TIMEOUT_S = 600.0  # actors starting and loading the model
POLL_S = 0.25  # how often a running job looks at `cancel`
WORKER_NICENESS_ENV = "RAY_worker_niceness"  # read by a local cluster when it starts

_pools: dict = {}
_lock = threading.Lock()


def _ray():
    try:
        import ray
    except ImportError:
        raise JobError("the ray engine needs Ray: pip install 'synapse-interp[ray]' (or ray==2.60.0)") from None
    return ray


def _probe(address: str) -> None:
    """Refuse an address nothing listens on, within CONNECT_TIMEOUT_S."""
    url = urlparse(address if "://" in address else "tcp://" + address)
    if not url.hostname or url.port is None:
        raise JobError(f"Ray address {address!r}: write ray://host:port, host:port or auto")
    try:
        socket.create_connection((url.hostname, url.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise JobError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def connect(engine: EngineConfig) -> None:
    """Join the configured cluster (or start a local one) unless this process already did."""
    address = engine.ray_address
    if address and address != "auto":
        _probe(address)  # first: a dead address is refused in seconds, whatever this process joined before
    ray = _ray()
    if ray.is_initialized():
        return
    if not address:
        # Ray starts workers at nice 15 by default; on a busy host our model actors, which do all of
        # the job's work, then get almost no CPU (an actor took minutes to import torch here).
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "on this machine"
        raise JobError(f"cannot start or join a Ray cluster {where}: {exc}") from None


class ModelWorker:
    """A Ray actor holding one copy of the model; runs shards of jobs on it."""

    def __init__(self, spec: str, device: str, dtype: str, threads: int):
        import torch

        from ..model.loading import load_model

        torch.set_num_threads(max(1, threads))
        self.handle = load_model(spec, device=device, dtype=dtype)

    def ready(self) -> dict:
        """Who this worker is, and its CPU seconds so far (benchmarks/ray_jobs.py adds them up)."""
        return {"fingerprint": self.handle.fingerprint, "pid": os.getpid(), "cpu_s": time.process_time()}

    def run(self, fn, index: int, cases: tuple, params: dict):
        return index, list(fn(self.handle, cases, **params))


def _resources(ray, engine: EngineConfig) -> tuple[int, float, float]:
    gpus_total = int(ray.cluster_resources().get("GPU", 0))
    gpus = engine.gpus_per_actor if engine.gpus_per_actor is not None else (1.0 if gpus_total else 0.0)
    actors = engine.ray_actors or (max(1, int(gpus_total // gpus)) if gpus else 2)
    return actors, engine.cpus_per_actor, gpus


def _unwrap(ray, exc: Exception, what: str) -> Exception:
    """The engine's own error inside a Ray error when there is one, else a JobError saying `what`."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SynapseError):
        return cause
    if isinstance(exc, ray.exceptions.RayActorError):
        return JobError(f"{what}: a Ray worker died more often than it may be restarted ({exc})")
    return JobError(f"{what}: {exc}")


class WorkerPool:
    """The actors of one (cluster, model, resources) and the Ray ActorPool that feeds them."""

    def __init__(self, handle: ModelHandle, engine: EngineConfig):
        ray = _ray()
        if handle.spec in ("", "in memory"):
            raise JobError(f"model {handle.name} was built in memory: Ray workers need a spec they can load "
                           "(bundled, a folder, a .gguf file or a hub id)")
        n, cpus, gpus = _resources(ray, engine)
        device = "cuda" if gpus else "cpu"
        dtype = str(handle.dtype).removeprefix("torch.")
        cls = ray.remote(ModelWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=engine.max_restarts,
                                              max_task_retries=engine.max_task_retries)
        self.actors = [cls.remote(handle.spec, device, dtype, int(cpus)) for _ in range(n)]
        try:
            infos = ray.get([a.ready.remote() for a in self.actors], timeout=READY_TIMEOUT_S)
        except Exception as exc:  # an actor whose model failed to load dies with its creation error
            self.kill()
            raise JobError(f"the Ray workers could not load model {handle.spec!r} ({device}, {dtype}): "
                           f"{getattr(exc, 'cause', None) or exc}") from None
        bad = [i for i in infos if i["fingerprint"] != handle.fingerprint]
        if bad:
            self.kill()
            raise JobError(f"a Ray worker loaded {handle.spec!r} with weights {bad[0]['fingerprint']}, this process "
                           f"has {handle.fingerprint}: give the workers the same model files")
        self.pids = [i["pid"] for i in infos]

    def kill(self) -> None:
        ray = _ray()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def pool_for(handle: ModelHandle, engine: EngineConfig) -> WorkerPool:
    """The pool for this model and engine, created (and the model loaded on each actor) on first use."""
    connect(engine)
    key = (engine.ray_address, handle.spec, handle.fingerprint, str(handle.dtype), engine.ray_actors,
           engine.cpus_per_actor, engine.gpus_per_actor, engine.max_restarts, engine.max_task_retries)
    with _lock:
        if key not in _pools:
            _pools[key] = WorkerPool(handle, engine)
        return _pools[key]


def shutdown_pools() -> None:
    """Kill every pool's actors (the cluster itself is left as it is)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        try:
            pool.kill()
        except Exception:  # the cluster may be gone already; nothing else holds these actors
            pass


def _drop(pool: WorkerPool) -> None:
    with _lock:
        for key in [k for k, p in _pools.items() if p is pool]:
            del _pools[key]
    pool.kill()


def _guarded(pool: WorkerPool, callback, *args):
    """callback(*args), the caller's cancel or progress; when it raises (a caller that stops the job its
    own way), the pool's actors are dropped first, so its queued shards do not run on for nobody."""
    try:
        return callback(*args)
    except BaseException:
        _drop(pool)
        raise


def run_on_ray(handle: ModelHandle, fn, cases: tuple, params: dict, engine: EngineConfig,
               progress: Progress | None = None, cancel=None) -> list:
    """The job's results in case order, computed shard by shard on the pool (see the module docstring)."""
    ray = _ray()
    from ray.util.actor_pool import ActorPool

    pool = pool_for(handle, engine)
    shards = split(cases, engine.shard_size or default_shard_size(len(cases), len(pool.actors)))
    feeder = ActorPool(pool.actors)
    for shard in shards:
        feeder.submit(lambda actor, s: actor.run.remote(fn, s.index, s.cases, params), shard)
    parts: list = [None] * len(shards)
    done = 0
    while feeder.has_next():
        if cancel is not None and _guarded(pool, cancel):
            _drop(pool)
            raise JobCancelled(f"cancelled after {done} of {len(cases)} prompts")
        try:
            index, out = feeder.get_next_unordered(timeout=POLL_S)
        except TimeoutError:
            continue
        except Exception as exc:
            raise _unwrap(ray, exc, f"shard of {len(cases)} prompts") from None
        assert parts[index] is None, f"shard {index} arrived twice"
        parts[index] = out
        done += len(out)
        if progress:
            _guarded(pool, progress, done, len(cases), f"shard {index + 1} of {len(shards)} done")
    return [result for part in parts for result in part]
