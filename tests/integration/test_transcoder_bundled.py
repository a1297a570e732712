"""Transcoders on the bundled model: the mlp.in / mlp.out site pair is the MLP's own input and output,
`features train --site-out` trains one end to end, and an attribution graph takes it in place of
that layer's MLP with its completeness intact."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli

from synapse_core.common import settings
from synapse_core.experiments.graphs import load_transcoders
from synapse_core.features import corpus
from synapse_core.features.harvest import capture, harvest, parse_site
from synapse_core.features.sae import load_sae
from synapse_core.graphs.build import build_graph

LAYER = 5
SITE_IN, SITE_OUT = f"layers.{LAYER}.mlp.in", f"layers.{LAYER}.mlp.out"
NAME = f"layers.{LAYER}.mlp.in-mlp.out.sae"
PROMPT = "The capital of Australia is the city of"


def cli(*args):
    return json.loads(run_cli(*args).stdout)


def _fvu(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    return float((y - y_hat).pow(2).sum(-1).mean() / (y - y.mean(0)).pow(2).sum(-1).mean())


def test_the_mlp_applied_to_mlp_in_gives_mlp_out(bundled, installed, tmp_path):
    """The identity that proves the site pair: the layer's MLP module run on the captured mlp.in
    reproduces the captured mlp.out (float32 captures to 1e-4; the float16 harvest to its rounding),
    and not the next layer's."""
    ctxs = list(corpus.contexts(bundled.tokenizer, "train", 64, 48))  # 3,072 tokens
    store = harvest(bundled, [SITE_IN, SITE_OUT], ctxs, len(ctxs), tmp_path / "h", 64, batch_size=8)
    assert store.n_done == 48 and store.sites == [SITE_IN, SITE_OUT]
    mlp = bundled.arch.mlp[LAYER]
    x = torch.from_numpy(np.asarray(store.acts(SITE_IN), dtype=np.float32)).reshape(-1, 576)
    y = torch.from_numpy(np.asarray(store.acts(SITE_OUT), dtype=np.float32)).reshape(-1, 576)
    with torch.no_grad():
        y_hat = mlp(x)
        other = bundled.arch.mlp[LAYER + 1](x)
    assert _fvu(y_hat, y) < 1e-3  # float16 storage of both sides
    assert _fvu(other, y) > 0.5
    sites = [parse_site(SITE_IN), parse_site(SITE_OUT)]
    got = capture(bundled, torch.from_numpy(np.stack(ctxs[:2])).long(), sites)
    with torch.no_grad():
        torch.testing.assert_close(mlp(got[sites[0]]), got[sites[1]], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def transcoder(installed):
    out = cli("features", "train", "--site", SITE_IN, "--site-out", SITE_OUT, "--d-sae", "1152", "--k", "16",
              "--tokens", "76800", "--contexts", "64", "--ctx-len", "64", "--batch-size", "256", "--json")
    return out


@pytest.mark.slow  # trains a transcoder on the corpus: the slow tier (make test-slow)
def test_features_train_makes_a_transcoder_of_the_mlp(bundled, transcoder):
    assert transcoder["path"] == str(settings.subdir("features") / NAME) and transcoder["steps"] == 300
    cfg = json.loads((Path(transcoder["path"]) / "cfg.json").read_text())
    assert cfg["hook_name"] == f"blocks.{LAYER}.ln2.hook_normalized"
    assert cfg["hook_name_out"] == f"blocks.{LAYER}.hook_mlp_out" and cfg["apply_b_dec_to_input"] is False
    listed = {s["name"]: s for s in cli("features", "list", "--json")["saes"]}
    assert (listed[NAME]["site"], listed[NAME]["hook_name_out"]) == ("mlp.in", f"blocks.{LAYER}.hook_mlp_out")
    tc = load_sae(Path(transcoder["path"]), dtype="float32")
    ctxs = np.stack(list(corpus.contexts(bundled.tokenizer, "heldout", 64, 8)))
    sites = [parse_site(SITE_IN), parse_site(SITE_OUT)]
    got = capture(bundled, torch.from_numpy(ctxs).long(), sites)
    x, y = (got[s][:, 1:].reshape(-1, 576) for s in sites)  # position 0 (the separator) is not trained on
    with torch.no_grad():
        assert _fvu(tc(x), y) < 0.8  # held-out text: it learned the MLP, not just its mean


@pytest.mark.slow  # needs the trained transcoder above
def test_a_graph_takes_the_trained_transcoder_and_stays_complete(bundled, transcoder):
    tcs = load_transcoders(bundled, [transcoder["path"]])
    assert set(tcs) == {LAYER}
    g = build_graph(bundled, PROMPT, " Sydney", " Canberra", claims=3, transcoders=tcs)
    assert g.completeness_error < 1e-4 and g.worst_node_error < 1e-4
    kinds = {n.kind for n in g.nodes}
    assert "feature" in kinds and "error" in kinds
    assert all(n.layer == LAYER for n in g.nodes if n.kind == "feature")
    assert not any(n.kind == "mlp" and n.layer == LAYER for n in g.nodes)
