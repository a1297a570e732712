"""train_site on a tiny model with a stand-in corpus: a transcoder from mlp.in to mlp.out, progress
reported per stage, stopped in the harvest and in training, resumed to exactly the weights of an
uninterrupted run; bad site pairs named."""
import numpy as np
import pytest
import torch

from synapse_core.common import settings
from synapse_core.common.errors import BadInput
from synapse_core.features import corpus, workflow
from synapse_core.features.sae import load_sae
from synapse_core.features.train import TrainConfig

VOCAB = 64
RUN = workflow.RunConfig(contexts=12, ctx_len=9, batch_size=4)
TCFG = TrainConfig(d_sae=16, k=4, n_tokens=32 * 10, batch_size=32, scale_tokens=64, checkpoint_every=3)
NAME = "layers.1.mlp.in-mlp.out.sae"


@pytest.fixture(autouse=True)
def stand_in_corpus(monkeypatch, tmp_path):
    def contexts(tokenizer, split, ctx_len=128, n_contexts=None, seed=0, root=None):
        rng = np.random.default_rng([seed, split == "train"])
        return (rng.integers(0, VOCAB, ctx_len).astype(np.int32) for _ in range(n_contexts))

    monkeypatch.setattr(corpus, "contexts", contexts)
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path / "home"))


def _train(llama, **kwargs):
    return workflow.train_site(llama, "layers.1.mlp.in", TCFG, RUN, site_out="layers.1.mlp.out", **kwargs)


def test_a_stopped_transcoder_run_resumes_to_the_weights_of_an_uninterrupted_one(llama, monkeypatch, tmp_path):
    seen = []
    folder, res = _train(llama, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert folder == settings.subdir("features") / NAME and res.steps_done == 10 and not res.stopped
    assert seen[0] == ("harvest", 4, 12) and ("harvest", 12, 12) in seen and seen[-1] == ("train", 10, 10)
    whole = load_sae(folder)
    assert whole.cfg.hook_name == "blocks.1.ln2.hook_normalized" and whole.cfg.hook_name_out == "blocks.1.hook_mlp_out"
    assert not whole.cfg.apply_b_dec_to_input

    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path / "again"))
    calls = {"n": 0}

    def stop_after(n):
        def should_stop():
            calls["n"] += 1
            return calls["n"] > n
        return should_stop

    assert _train(llama, should_stop=stop_after(1)) == (None, None)  # after the harvest's first batch
    calls["n"] = 0
    folder, res = _train(llama, should_stop=stop_after(2 + 4))  # the harvest's other two batches, then 4 steps
    assert folder is None and res.stopped and res.steps_done == 4
    folder, res = _train(llama)
    assert res.steps_done == 10 and not res.stopped
    resumed = load_sae(folder)
    for name, p in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], p), name


@pytest.mark.parametrize("site, out, message", [
    ("layers.1.mlp.out", "layers.1.mlp.in", "which comes before it"),
    ("layers.1.mlp.in", "layers.2.mlp.out", "layer 2 does not exist"),
    ("layers.0.resid.pre", None, "unknown site 'layers.0.resid.pre'"),
])
def test_bad_site_pairs_are_named(llama, site, out, message):
    with pytest.raises(BadInput, match=message):
        workflow.site_pair(llama, site, out)


def test_features_train_draws_a_progress_bar_per_stage(capsys, tmp_path):
    from ablation_models import tiny_handle

    from synapse_core.cli.main import main

    model_dir = tmp_path / "tiny"
    handle = tiny_handle("llama")
    handle.model.save_pretrained(model_dir)
    handle.tokenizer.save_pretrained(model_dir)
    code = main(["features", "train", "--model", str(model_dir), "--site", "layers.1.mlp.in", "--site-out",
                 "layers.1.mlp.out", "--d-sae", "16", "--k", "4", "--tokens", "320", "--contexts", "12",
                 "--ctx-len", "9", "--batch-size", "32"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = err.splitlines()
    assert f"harvest [{'#' * 30}] 12/12 contexts" in lines and f"train   [{'#' * 30}] 10/10 steps" in lines
    assert any(line.startswith("train   [###.") for line in lines)  # drawn on the way, not only at the end
    assert f"trained {settings.subdir('features') / NAME}" in out
