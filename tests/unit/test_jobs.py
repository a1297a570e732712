"""The job interface without a cluster: engine configuration, shards, the local engine (results,
progress, cancellation), the prompt-set sweep, the CLI's --prompt-set, and an unreachable Ray address.
The ray engine itself runs against a real local cluster in tests/integration/test_ray_jobs.py."""
import json
import time

import numpy as np
import pytest
from ablation_models import PROMPT, tiny_handle

from synapse_core.arch.spec import Intervention
from synapse_core.cli.main import main
from synapse_core.common.errors import BadInput
from synapse_core.interventions.promptset import PromptCase, evaluate_prompt_set
from synapse_core.interventions.promptsweep import sweep_prompt_set
from synapse_core.interventions.sweep import sweep_heads
from synapse_core.jobs.config import EngineConfig, JobCancelled, JobError, engine_config
from synapse_core.jobs.engine import run_job
from synapse_core.jobs.shards import split
from synapse_core.jobs.tasks import run_prompt_set

CASES = (PromptCase(PROMPT, "Paris", "London"), PromptCase("the old tower in London was a small", "Paris", "London"),
         PromptCase("the capital of France", "city", "London"))


@pytest.fixture(scope="module")
def llama():
    return tiny_handle("llama")


def test_flags_win_over_the_environment_which_wins_over_secrets(monkeypatch):
    secrets = {"jobs": {"engine": "ray", "ray_address": "ray://s:10001", "ray_actors": 7}}
    monkeypatch.delenv("SYNAPSE_ENGINE", raising=False)
    monkeypatch.delenv("SYNAPSE_RAY_ADDRESS", raising=False)
    monkeypatch.setenv("SYNAPSE_RAY_ACTORS", "3")
    cfg = engine_config(secrets=secrets)
    assert (cfg.engine, cfg.ray_address, cfg.ray_actors) == ("ray", "ray://s:10001", 3)
    assert engine_config("local", ray_actors=5, secrets=secrets).engine == "local"
    assert engine_config(ray_actors=5, secrets=secrets).ray_actors == 5
    assert engine_config(secrets={"SYNAPSE_ENGINE": "ray"}).engine == "ray"
    monkeypatch.delenv("SYNAPSE_RAY_ACTORS")
    assert engine_config().engine == "local"


@pytest.mark.parametrize("kwargs, named", [({"engine": "spark"}, "'spark'"), ({"ray_actors": 0}, "actors 0")])
def test_a_bad_engine_setting_is_named(kwargs, named):
    with pytest.raises(BadInput, match=named):
        engine_config(**kwargs)


def test_a_setting_that_is_not_a_number_is_named(monkeypatch):
    monkeypatch.setenv("SYNAPSE_RAY_ACTORS", "many")
    with pytest.raises(BadInput, match="'many'"):
        engine_config()


def test_shards_cover_every_case_once_in_order():
    shards = split(range(11), 4)
    assert [s.start for s in shards] == [0, 4, 8]
    assert [c for s in shards for c in s.cases] == list(range(11))


def test_the_local_engine_gives_today_s_prompt_set_result(llama):
    iv = [Intervention(1, "attn.head", "zero", 2)]
    seen = []
    r = run_prompt_set(llama, CASES, iv, progress=lambda d, n, m: seen.append((d, n)))
    ref = evaluate_prompt_set(llama, CASES, iv)
    assert r.table() == ref.table()
    assert (r.mean_change, r.mean_kl, r.interventions) == (ref.mean_change, ref.mean_kl, ref.interventions)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def _rows_of(handle, cases, progress=None, **params):
    out = []
    for i, c in enumerate(cases):
        out.append(c)
        if progress:
            progress(i + 1, len(cases), c)
    return out


def test_cancel_stops_a_local_job(llama):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2  # false before it starts and after the first case, then true

    with pytest.raises(JobCancelled, match="after 2 of 5"):
        run_job(llama, _rows_of, range(5), cancel=cancel)
    with pytest.raises(JobCancelled, match="before it started"):
        run_job(llama, _rows_of, range(5), cancel=lambda: True)
    assert run_job(llama, _rows_of, range(5), cancel=lambda: False) == list(range(5))


def test_a_sweep_over_a_prompt_set_is_the_mean_of_each_prompt_s_sweep(llama):
    r = sweep_prompt_set(llama, CASES)
    singles = [sweep_heads(llama, c.prompt, c.target, c.contrast, metric="logit_diff") for c in CASES]
    np.testing.assert_allclose(r.mean_effects, np.mean([s.effects for s in singles], axis=0), atol=1e-6)
    assert [s.prompt for s in r.sweeps] == [c.prompt for c in CASES]
    assert r.metric == "logit_diff"
    name, effect = r.top(1)[0]
    assert abs(effect) == float(np.abs(r.mean_effects).max())
    assert name.startswith("layers.")


def test_an_unreachable_ray_address_fails_within_seconds():
    from synapse_core.jobs.raypool import connect

    t0 = time.perf_counter()
    with pytest.raises(JobError, match="cannot reach the Ray cluster at ray://127.0.0.1:1"):
        connect(EngineConfig("ray", ray_address="ray://127.0.0.1:1"))
    assert time.perf_counter() - t0 < 10
    with pytest.raises(JobError, match="'ray://nohost'"):
        connect(EngineConfig("ray", ray_address="ray://nohost"))


# ---- the CLI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, llama):
    folder = tmp_path_factory.mktemp("tiny-llama-jobs")
    llama.model.save_pretrained(folder)
    llama.tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "set.txt"
    path.write_text("# a comment\n" + "\n".join(f"{c.prompt} | {c.target} | {c.contrast}" for c in CASES) + "\n")
    return str(path)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ablate_over_a_prompt_set_prints_each_prompt_in_file_order(model_dir, prompt_file, capsys):
    code, out, err = _run(capsys, "ablate", "--model", model_dir, "--prompt-set", prompt_file, "--heads", "1.2",
                          "--no-masks", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [p["prompt"] for p in data["prompts"]] == [c.prompt for c in CASES]
    assert [p["contrast"] for p in data["prompts"]] == ["London"] * 3
    assert data["metric"] == "logit_diff"
    for p in data["prompts"]:
        assert p["effect"] == pytest.approx(p["ablated"] - p["clean"], abs=1e-6)
    assert data["mean_effect"] == pytest.approx(np.mean([p["effect"] for p in data["prompts"]]), abs=1e-6)
    assert len(data["experiment"]) == 16
    code, out2, err2 = _run(capsys, "ablate", "--model", model_dir, "--prompt-set", prompt_file, "--heads", "1.2",
                            "--no-masks", "--engine", "local", "--json")
    assert json.loads(out2)["experiment"] == data["experiment"] and "answered from the store" in err2


def test_sweep_over_a_prompt_set_prints_each_map_and_their_mean(model_dir, prompt_file, capsys):
    code, out, err = _run(capsys, "sweep", "--model", model_dir, "--prompt-set", prompt_file, "--no-masks", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [p["target"] for p in data["prompts"]] == ["Paris", "Paris", "city"]
    effects = np.array([p["effect"] for p in data["prompts"]])  # (prompt, layer, head)
    np.testing.assert_allclose(np.array(data["mean_effects"]), effects.mean(axis=0), atol=1e-6)
    assert np.array(data["prompts"][0]["ablated"]).shape == effects.shape[1:]


@pytest.mark.parametrize("argv, named", [
    (["--prompt", PROMPT, "--target", "Paris", "--engine", "ray"], "--prompt-set runs only"),
    (["--prompt-set", "PF", "--prompt", PROMPT], "not both"),
    (["--prompt-set", "/nowhere/set.txt"], "prompt set /nowhere/set.txt does not exist"),
    ([], "give --prompt and --target"),
])
def test_prompt_set_arguments_are_checked(model_dir, prompt_file, capsys, argv, named):
    argv = [prompt_file if a == "PF" else a for a in argv]
    code, _, err = _run(capsys, "ablate", "--model", model_dir, "--heads", "1.2", *argv)
    assert code == 2 and named in err


def test_the_engine_flags_of_every_long_command_win_over_the_environment(monkeypatch, capsys):
    import argparse

    from synapse_core.cli.promptsets import add_engine_args, engine_of

    monkeypatch.setenv("SYNAPSE_RAY_CPUS_PER_ACTOR", "3")
    monkeypatch.setenv("SYNAPSE_RAY_GPUS_PER_ACTOR", "0.5")
    p = argparse.ArgumentParser()
    add_engine_args(p, "a job")
    cfg = engine_of(p.parse_args(["--engine", "ray", "--ray-actors", "4", "--ray-cpus-per-actor", "2"]))
    assert (cfg.engine, cfg.ray_actors, cfg.cpus_per_actor, cfg.gpus_per_actor) == ("ray", 4, 2.0, 0.5)
    assert engine_of(p.parse_args(["--ray-gpus-per-actor", "1"])).gpus_per_actor == 1.0
    with pytest.raises(BadInput, match="CPUs per actor -1"):
        engine_of(p.parse_args(["--ray-cpus-per-actor", "-1"]))
    for command in ("discover", "quarantine cost", "features train", "features eval", "ablate", "sweep"):
        main([*command.split(), "--help"])
        assert "--ray-cpus-per-actor" in capsys.readouterr().out, command


def test_a_model_built_in_memory_is_refused_by_the_ray_engine_by_name(llama):
    pytest.importorskip("ray", reason="the ray engine needs Ray")
    from synapse_core.jobs.raypool import WorkerPool

    with pytest.raises(JobError, match=f"model {llama.name} was built in memory"):
        WorkerPool(llama, EngineConfig("ray"))


def test_a_cancelled_experiment_stores_nothing_and_a_finished_one_is_stored(llama, tmp_path):
    from synapse_core.experiments.records import promptset_config, run_experiment
    from synapse_core.experiments.store import ResultStore

    store = ResultStore(tmp_path / "results")
    config = promptset_config(llama, CASES, [Intervention(0, "attn.head", "zero", head=1)])
    seen = []
    with pytest.raises(JobCancelled, match="after 2 of 3"):
        run_experiment(llama, config, store, progress=lambda d, t, m: seen.append(d), cancel=lambda: bool(seen))
    assert store.keys() == []
    exp = run_experiment(llama, config, store, cancel=lambda: False)
    assert store.keys() == [exp.hash] and not exp.from_cache and len(exp.result.rows) == 3
