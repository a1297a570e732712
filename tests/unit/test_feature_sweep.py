"""Feature sweeps on a tiny model: each feature of one SAE zeroed in turn (error term kept), batched,
equal to a single-feature ablation run alone; a feature that never fires has an effect of exactly 0;
stored as an experiment like a head sweep."""
import json

import pytest
import torch
from ablation_models import PROMPT, tiny_handle
from test_cli_ablate import _run, model_dir  # noqa: F401 - model_dir is a fixture

from synapse_core.common import settings
from synapse_core.common.errors import BadInput
from synapse_core.experiments.records import (
    export_csv,
    feature_promptsweep_config,
    feature_sweep_config,
    headline,
    run_experiment,
)
from synapse_core.experiments.store import ResultStore
from synapse_core.features.intervene import feature_intervention
from synapse_core.features.sae import SAEConfig, TopKSAE
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.promptset import PromptCase
from synapse_core.interventions.sweep import active_features, sweep_features

SAES = {"layers.0.attn.out.sae": "blocks.0.hook_attn_out", "layers.1.mlp.out.sae": "blocks.1.hook_mlp_out"}
DEAD = 11  # never fires
D_SAE = 12


@pytest.fixture(scope="module", autouse=True)
def saes():
    for seed, (name, hook) in enumerate(SAES.items()):
        gen = torch.Generator().manual_seed(10 + seed)
        s = TopKSAE(SAEConfig(d_in=32, d_sae=D_SAE, k=4, hook_name=hook))
        with torch.no_grad():
            for p in s.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            s.b_enc[DEAD] = -1e4
        s.save(settings.subdir("features") / name)


@pytest.mark.parametrize("sae", list(SAES))
def test_each_effect_equals_that_feature_zeroed_alone_and_a_dead_feature_reads_exactly_zero(sae):
    handle = tiny_handle("llama")
    features = tuple(range(D_SAE))
    r = sweep_features(handle, PROMPT, "Paris", sae, features, contrast="London", batch_rows=5)
    assert r.kind == "features" and r.effects.shape == (1, D_SAE) and r.forward_passes == 3
    assert r.metric == "logit_diff" and r.features == features
    for j, f in enumerate(features):
        alone = ablate(handle, PROMPT, "Paris", [feature_intervention(f"{sae}.{f}")], "London")
        assert r.effects[0, j] == pytest.approx(alone.delta("logit_diff"), abs=1e-5)
        assert r.kl[0, j] == pytest.approx(alone.kl_divergence, abs=1e-5)
        assert r.name(0, j) == f"{sae}.{f}"
    assert r.effects[0, DEAD] == 0.0 and r.kl[0, DEAD] == 0.0
    assert (abs(r.effects[0]) > 1e-4).sum() >= 3  # the live features really do something


def test_active_features_are_the_strongest_on_the_prompt():
    handle = tiny_handle("llama")
    sae = "layers.0.attn.out.sae"  # below the last layer, so a feature at any position reaches the last one
    every = active_features(handle, PROMPT, sae, top=D_SAE)
    assert DEAD not in every and len(every) >= 4
    assert active_features(handle, PROMPT, sae, top=2) == every[:2]
    r = sweep_features(handle, PROMPT, "Paris", sae, every)
    assert (r.kl[0] > 0).all()  # every feature it picked fires, so zeroing it changes the output


def test_a_feature_sweep_is_a_stored_experiment(tmp_path):
    handle = tiny_handle("llama")
    store = ResultStore(tmp_path / "results")
    sae = "layers.0.attn.out.sae"
    config = feature_sweep_config(handle, PROMPT, "Paris", sae, top=3)
    assert config.sweep_features == active_features(handle, PROMPT, sae, top=3)
    assert "3 features of layers.0.attn.out.sae" in config.title
    first = run_experiment(handle, config, store)
    again = run_experiment(handle, feature_sweep_config(handle, PROMPT, "Paris", sae, top=3), store)
    assert not first.from_cache and again.from_cache and again.hash == first.hash
    assert first.result.features == config.sweep_features
    csv = export_csv(first).splitlines()
    assert csv[0].startswith("feature,") and len(csv) == 4
    assert sae in headline(first)
    other = feature_sweep_config(handle, PROMPT, "Paris", sae, features=(1, 2, 3))
    assert other.hash != config.hash or config.sweep_features == (1, 2, 3)


@pytest.mark.parametrize("call, message", [
    (lambda h: sweep_features(h, PROMPT, "Paris", "layers.1.mlp.out.sae", ()), "no feature of layers.1.mlp.out.sae"),
    (lambda h: sweep_features(h, PROMPT, "Paris", "layers.1.mlp.out.sae", (2, 2)), "names a feature twice"),
    (lambda h: sweep_features(h, PROMPT, "Paris", "layers.1.mlp.out.sae", (12,)), "feature 12 does not exist"),
    (lambda h: active_features(h, PROMPT, "layers.1.attn.out.sae"), "no SAE named 'layers.1.attn.out.sae'"),
    (lambda h: active_features(h, PROMPT, "layers.1.mlp.out.sae", top=0), "top 0"),
])
def test_bad_feature_sweeps_are_named(call, message):
    with pytest.raises(BadInput, match=message):
        call(tiny_handle("llama"))


def test_sweep_over_features_on_the_command_line(model_dir, capsys):  # noqa: F811 - the fixture
    sae = "layers.0.attn.out.sae"
    code, out, err = _run(capsys, "sweep", "--model", model_dir, "--over", "features", "--sae", sae, "--top", "4",
                          "--prompt", PROMPT, "--target", "Paris", "--contrast", "London", "--json")
    assert code == 0, err
    payload = json.loads(out)
    ref = sweep_features(tiny_handle("llama"), PROMPT, "Paris", sae, active_features(tiny_handle("llama"), PROMPT,
                                                                                        sae, 4), "London")
    assert [e["feature"] for e in payload["effects"]] == list(ref.features)
    assert [e["name"] for e in payload["effects"]] == [f"{sae}.{f}" for f in ref.features]
    for e, want in zip(payload["effects"], ref.effects[0]):
        assert e["effect"] == pytest.approx(float(want), abs=1e-5)
    code, out, err = _run(capsys, "sweep", "--model", model_dir, "--over", "features", "--sae", sae, "--features",
                          f"{DEAD},1", "--prompt", PROMPT, "--target", "Paris", "--json")
    assert code == 0, err
    assert json.loads(out)["effects"][0] == {"feature": DEAD, "name": f"{sae}.{DEAD}", "effect": 0.0}
    code, _, err = _run(capsys, "sweep", "--model", model_dir, "--over", "features", "--prompt", PROMPT,
                        "--target", "Paris")
    assert code == 2 and "--over features needs --sae" in err
    code, _, err = _run(capsys, "sweep", "--model", model_dir, "--over", "features", "--sae", sae, "--mode", "mean",
                        "--prompt", PROMPT, "--target", "Paris")
    assert code == 2 and "--mode mean is not offered" in err


SET = (PromptCase(PROMPT, "Paris", "London"), PromptCase("the old tower in London was a small", "Paris", "London"),
       PromptCase("the capital of France", "city", "London"))


def test_a_feature_sweep_over_a_prompt_set_is_the_mean_of_each_prompt_s_sweep(tmp_path):
    """The features most active on any prompt of the set (the peak over every prompt), zeroed in turn on
    each prompt: each prompt's map is that prompt's own feature sweep and the mean is their mean (the
    Ray engine runs the same sweep in tests/integration/test_ray_jobs.py)."""
    handle = tiny_handle("llama")
    sae = "layers.0.attn.out.sae"
    chosen = active_features(handle, [c.prompt for c in SET], sae, top=5)
    singles = [active_features(handle, c.prompt, sae, top=D_SAE) for c in SET]
    assert len(chosen) == 5 and DEAD not in chosen and set(chosen) <= set().union(*singles)
    config = feature_promptsweep_config(handle, SET, sae, top=5)
    assert config.kind == "promptsweep" and config.sweep_features == chosen and config.metric == "logit_diff"
    exp = run_experiment(handle, config, ResultStore(tmp_path / "a"))
    r = exp.result
    assert r.kind == "features" and r.mean_effects.shape == (1, 5)
    for case, s in zip(SET, r.sweeps):
        alone = sweep_features(handle, case.prompt, case.target, sae, chosen, case.contrast)
        assert s.effects.tolist() == alone.effects.tolist()
    assert r.mean_effects[0] == pytest.approx(sum(s.effects[0] for s in r.sweeps) / 3, abs=1e-6)
    assert r.name(0, 0) == f"{sae}.{chosen[0]}" and r.to_json()["features"] == list(chosen)


def test_a_feature_sweep_over_a_prompt_set_on_the_command_line(model_dir, capsys, tmp_path):  # noqa: F811
    sae = "layers.0.attn.out.sae"
    path = tmp_path / "set.txt"
    path.write_text("\n".join(f"{c.prompt} | {c.target} | {c.contrast}" for c in SET), encoding="utf-8")
    code, out, err = _run(capsys, "sweep", "--model", model_dir, "--over", "features", "--sae", sae, "--features",
                          f"1,{DEAD}", "--prompt-set", str(path), "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["kind"] == "features" and payload["features"] == [1, DEAD]
    assert [p["prompt"] for p in payload["prompts"]] == [c.prompt for c in SET]
    assert payload["mean_effects"][0][1] == 0.0  # the dead feature changes nothing on any prompt
    ref = [sweep_features(tiny_handle("llama"), c.prompt, c.target, sae, (1,), c.contrast).effects[0, 0] for c in SET]
    assert payload["mean_effects"][0][0] == pytest.approx(float(sum(ref) / 3), abs=1e-5)
