"""Long jobs over a prompt set on one of two engines: `local` (in this process, the default) or `ray`
(a pool of actors each holding the model, fed shards by Ray, restarted and retried by Ray).

config.py   which engine, from flags, the environment or secrets.toml (EngineConfig)
engine.py   the job interface: a shard function over cases, results in case order (run_job)
shards.py   contiguous shards of a job's cases
raypool.py  the ray engine: connecting, the actor pool, faults, cancellation
tasks.py    prompt-set evaluation of an intervention, sweeps over a prompt set; engine.mapper hands the
            engine to discovery, harvesting and cost reports (model.mapper)

A job gives the same result, and is the same experiment with the same hash, on either engine.
"""
