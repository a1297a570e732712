"""The ray engine against a real Ray cluster: a head on loopback with two CPU workers, started once
for this module and shut down after. A prompt-set evaluation and a sweep over a prompt set on the
bundled model give the local engine's numbers (1e-5, float32) and the same experiment hash, and a
model actor killed mid-job is restarted by Ray, its shard re-run, and the result still complete. A cost
report (text and prompts), a discovery over a prompt set and a harvest give the local results too."""
import json
import os

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray engine's tests need Ray: pip install 'synapse-interp[ray]'")

from synapse_core.arch.spec import Intervention  # noqa: E402
from synapse_core.experiments.records import promptset_config, promptsweep_config, run_experiment  # noqa: E402
from synapse_core.experiments.store import ResultStore  # noqa: E402
from synapse_core.interventions.promptset import parse_prompt_lines  # noqa: E402
from synapse_core.jobs import raypool  # noqa: E402
from synapse_core.jobs.config import EngineConfig, JobCancelled  # noqa: E402

CASES = parse_prompt_lines("""
When Mary and John went to the store, John gave a drink to | " Mary" | " John"
The capital of Australia is the city of | " Sydney" | " Canberra"
The Eiffel Tower is in the city of | " Paris" | " London"
When Tom and Anna met at the park, Anna handed a ball to | " Tom" | " Anna"
The capital of France is | " Paris" | " Rome"
After Lisa and Mark had lunch, Mark gave the bill to | " Lisa" | " Mark"
""")
HEAD = [Intervention(0, "attn.head", "zero", 6)]
RAY = EngineConfig("ray", ray_actors=2, shard_size=1)


@pytest.fixture(scope="module")
def cluster():
    import torch

    os.environ.setdefault(raypool.WORKER_NICENESS_ENV, "0")  # see raypool.connect
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor (one CPU each): the same kernels, so the local run rounds alike
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        raypool.shutdown_pools()
        ray.shutdown()


def _stores(tmp_path):
    return ResultStore(tmp_path / "local"), ResultStore(tmp_path / "ray")  # so neither run is answered from the other


def _same_rows(a, b):
    assert [r.case for r in a.rows] == [r.case for r in b.rows]
    for x, y in zip(a.rows, b.rows):
        for metric in ("log_prob", "target_prob", "logit_diff"):
            assert y.intervened.value(metric) == pytest.approx(x.intervened.value(metric), abs=1e-5)
            assert y.clean.value(metric) == pytest.approx(x.clean.value(metric), abs=1e-5)
        assert y.kl == pytest.approx(x.kl, abs=1e-5)
        assert y.top1_changed == x.top1_changed


def test_a_prompt_set_on_ray_is_the_local_experiment(bundled, cluster, tmp_path):
    local_store, ray_store = _stores(tmp_path)
    config = promptset_config(bundled, CASES, HEAD)
    local = run_experiment(bundled, config, local_store)
    seen = []
    remote = run_experiment(bundled, config, ray_store, engine=RAY, progress=lambda d, n, m: seen.append(d))
    assert remote.hash == local.hash and not remote.from_cache
    _same_rows(local.result, remote.result)
    assert remote.result.mean_change == pytest.approx(local.result.mean_change, abs=1e-5)
    assert sorted(seen) == list(range(1, len(CASES) + 1))  # one report per shard as it finished
    assert len(set(raypool.pool_for(bundled, RAY).pids)) == 2  # two actor processes did the work


def test_a_sweep_over_a_prompt_set_on_ray_is_the_local_experiment(bundled, cluster, tmp_path):
    local_store, ray_store = _stores(tmp_path)
    config = promptsweep_config(bundled, (CASES[4], CASES[2]))  # the two shortest: 270 heads each
    local = run_experiment(bundled, config, local_store)
    remote = run_experiment(bundled, config, ray_store, engine=RAY)
    assert remote.hash == local.hash
    np.testing.assert_allclose(remote.result.mean_effects, local.result.mean_effects, atol=1e-5)
    for a, b in zip(local.result.sweeps, remote.result.sweeps):
        assert a.prompt == b.prompt
        np.testing.assert_allclose(b.effects, a.effects, atol=1e-5)


def test_a_feature_sweep_over_a_prompt_set_on_ray_is_the_local_experiment(bundled, cluster, tmp_path):
    from synapse_core.experiments.records import feature_promptsweep_config

    local_store, ray_store = _stores(tmp_path)
    config = feature_promptsweep_config(bundled, CASES[:3], "layers.5.resid.post.sae", top=6)
    local = run_experiment(bundled, config, local_store)
    remote = run_experiment(bundled, config, ray_store, engine=RAY)
    assert remote.hash == local.hash and remote.result.kind == "features" and len(config.sweep_features) == 6
    np.testing.assert_allclose(remote.result.mean_effects, local.result.mean_effects, atol=1e-5)
    assert np.abs(local.result.mean_effects).max() > 1e-3  # the features matter to the answers


def test_the_cli_prints_the_same_prompt_set_on_both_engines(bundled, cluster, tmp_path, monkeypatch, capsys):
    from synapse_core.cli.main import main

    path = tmp_path / "set.txt"
    path.write_text("\n".join(f'{c.prompt} | "{c.target}" | "{c.contrast}"' for c in CASES[:3]), encoding="utf-8")
    out = {}
    for engine in ("ray", "local"):
        monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path / engine))  # a store each: neither answers the other
        argv = ["ablate", "--prompt-set", str(path), "--heads", "0.6", "--no-masks", "--engine", engine, "--json"]
        code = main(argv + (["--ray-actors", "2"] if engine == "ray" else []))
        stdout, err = capsys.readouterr()
        assert code == 0, err
        out[engine] = json.loads(stdout)
    assert out["ray"]["experiment"] == out["local"]["experiment"]
    assert [p["prompt"] for p in out["ray"]["prompts"]] == [c.prompt for c in CASES[:3]]
    for a, b in zip(out["local"]["prompts"], out["ray"]["prompts"]):
        assert (b["clean"], b["ablated"], b["effect"]) == pytest.approx((a["clean"], a["ablated"], a["effect"]), abs=1e-5)


def test_an_actor_killed_mid_job_is_replaced_and_its_shard_rerun(bundled, cluster, tmp_path):
    local_store, ray_store = _stores(tmp_path)
    config = promptset_config(bundled, CASES[:4], HEAD)
    local = run_experiment(bundled, config, local_store)
    pool = raypool.pool_for(bundled, RAY)
    victim = pool.actors[1]
    old_pid = ray.get(victim.ready.remote())["pid"]
    done = []

    def kill_once(d, n, message):  # the first shard is in; the other actor is busy with the next one
        done.append(d)
        if len(done) == 1:
            ray.kill(victim, no_restart=False)

    remote = run_experiment(bundled, config, ray_store, engine=RAY, progress=kill_once)
    assert sorted(done) == [1, 2, 3, 4]  # every shard counted once, none twice
    _same_rows(local.result, remote.result)
    assert remote.result.mean_change == pytest.approx(local.result.mean_change, abs=1e-5)
    assert ray.get(victim.ready.remote(), timeout=120)["pid"] != old_pid  # Ray restarted it


TEXT = ("The river ran past the old mill and under the stone bridge, where the children of the village "
        "used to stand and watch the boats go by. In the spring the water rose high enough to cover the lowest "
        "steps, and the miller would complain that the wheel turned too fast. ") * 6


def test_a_cost_report_on_ray_is_the_local_report(bundled, cluster, tmp_path):
    """The text's windows and the capability and target prompts' logits, before and after the
    quarantine, run on the actors: the same report."""
    from synapse_core.analysis.capabilities import default_capabilities
    from synapse_core.analysis.cost import cost_config
    from synapse_core.analysis.perplexity import text_docs
    from synapse_core.experiments.costs import run_cost

    docs = text_docs(bundled, TEXT, "river")
    caps = default_capabilities()[::8]  # 15 of the 120 shipped prompts, from every group
    config = cost_config(bundled, ["0.6", "23.5"], text=docs, window=64, capabilities=caps, targets=CASES[1:2])
    local_store, ray_store = _stores(tmp_path)
    local = run_cost(bundled, config, docs, local_store)
    on_ray = run_cost(bundled, config, docs, ray_store, engine=RAY)
    assert on_ray.hash == local.hash and not on_ray.from_cache
    a, b = local.result, on_ray.result
    assert b.text.perplexity_before == pytest.approx(a.text.perplexity_before, rel=1e-6)
    assert b.text.perplexity_after == pytest.approx(a.text.perplexity_after, rel=1e-6)
    assert a.text.perplexity_after != a.text.perplexity_before
    assert b.text.ce_interval == pytest.approx(a.text.ce_interval, rel=1e-5, abs=1e-7)
    assert [g.group for g in b.groups] == [g.group for g in a.groups] and len(a.groups) > 1
    for x, y in zip(a.groups, b.groups):
        assert (y.accuracy_before, y.accuracy_after, y.agreement) == (x.accuracy_before, x.accuracy_after, x.agreement)
        assert y.mean_kl == pytest.approx(x.mean_kl, abs=1e-5)  # each pass holds the same prompts on either engine
        assert y.worst_kl == pytest.approx(x.worst_kl, abs=1e-5)
        assert [f.prompt for f in y.flipped] == [f.prompt for f in x.flipped]
    (x,), (y,) = a.targets, b.targets
    assert x.prob_before != x.prob_after  # the heads matter to the target
    for name in ("prob_before", "prob_after", "logit_diff_before", "logit_diff_after"):
        assert getattr(y, name) == pytest.approx(getattr(x, name), abs=1e-5)


def test_a_discovery_over_a_prompt_set_on_ray_is_the_local_experiment(bundled, cluster, tmp_path):
    """Every stage's per-prompt work (ranking, verification, pairs, the baselines) on the actors."""
    from synapse_core.analysis.discovery import discovery_config
    from synapse_core.experiments.discoveries import run_discovery

    config = discovery_config(bundled, cases=CASES[:4], top_k_heads=3, max_pair_sweeps=2, verify_heads=8)
    local_store, ray_store = _stores(tmp_path)
    stages = []
    local = run_discovery(bundled, config, local_store)
    remote = run_discovery(bundled, config, ray_store, lambda stage, d, n: stages.append(stage), engine=RAY)
    assert remote.hash == local.hash and not remote.from_cache
    assert {"ranking", "verification", "pairs", "baseline", "held_out"} <= set(stages)
    a, b = local.result, remote.result
    np.testing.assert_allclose(b.estimates, a.estimates, atol=1e-5)
    assert [h.ref for h in b.candidates] == [h.ref for h in a.candidates]
    assert [h.verified_effect for h in b.candidates] == pytest.approx([h.verified_effect for h in a.candidates],
                                                                      abs=1e-5)
    assert b.circuit.heads == a.circuit.heads and b.held_out.prompts == a.held_out.prompts
    for x, y in ((a.circuit, b.circuit), (a.held_out, b.held_out)):
        assert y.effect == pytest.approx(x.effect, abs=1e-5)
        assert y.random_effects == pytest.approx(x.random_effects, abs=1e-5)


def test_a_harvest_on_ray_writes_the_local_activations(bundled, cluster, tmp_path):
    from synapse_core.features.harvest import harvest
    from synapse_core.jobs.engine import mapper

    ids = bundled.tokenizer(TEXT).input_ids
    contexts = [np.array(ids[i * 32:(i + 1) * 32], dtype=np.int32) for i in range(9)]
    sites = ["layers.2.resid.post", "layers.3.mlp.in"]
    here = harvest(bundled, sites, iter(contexts), 9, tmp_path / "local", ctx_len=32, batch_size=2)
    there = harvest(bundled, sites, iter(contexts), 9, tmp_path / "ray", ctx_len=32, batch_size=2,
                    mapper=mapper(bundled, RAY))
    np.testing.assert_array_equal(there.tokens(), here.tokens())
    for site in sites:  # float16 as stored: equal float32 values to 1e-5 round alike but for a rare last bit
        a, b = here.acts(site).astype(np.float32), there.acts(site).astype(np.float32)
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)
        assert np.abs(a).max() > 0


def test_a_cancelled_job_stops_its_actors_and_stores_nothing(bundled, cluster, tmp_path):  # last: it ends the pool
    store = ResultStore(tmp_path / "ray")
    config = promptset_config(bundled, CASES, HEAD)
    pool = raypool.pool_for(bundled, RAY)
    done = []
    with pytest.raises(JobCancelled, match=f"cancelled after 1 of {len(CASES)} prompts"):
        run_experiment(bundled, config, store, engine=RAY, progress=lambda d, n, m: done.append(d),
                       cancel=lambda: bool(done))
    assert store.get(config.hash) is None
    assert pool not in raypool._pools.values()  # the next job starts a new pool
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(pool.actors[0].ready.remote(), timeout=60)


def test_workers_that_lack_the_model_s_files_are_a_clear_error(cluster, tmp_path):
    """A model this process loaded from a folder the workers cannot read (here: gone since) is refused
    with the spec named, before any shard runs, not left to hang or to fail shard by shard."""
    import shutil
    import sys
    from pathlib import Path

    from synapse_core import load_model
    from synapse_core.interventions.promptset import PromptCase
    from synapse_core.jobs.config import JobError
    from synapse_core.jobs.tasks import run_prompt_set

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from ablation_models import PROMPT, tiny_handle

    folder = tmp_path / "tiny-llama"
    tiny = tiny_handle("llama")
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    handle = load_model(str(folder))
    shutil.rmtree(folder)
    engine = EngineConfig("ray", ray_actors=1, max_restarts=0, max_task_retries=0)
    with pytest.raises(JobError, match=f"the Ray workers could not load model '{folder}'"):
        run_prompt_set(handle, [PromptCase(PROMPT, "Paris", "London")], [Intervention(0, "attn.head", "zero", 1)],
                       engine=engine)
