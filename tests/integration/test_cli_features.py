"""`features` from the command line on the bundled model: a small SAE trained and evaluated in the
session's SYNAPSE_HOME, listed, shown, labelled; a top context re-run gives its activation."""
import json
import os
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli

from synapse_core.common import settings
from synapse_core.features import corpus
from synapse_core.features.harvest import capture, parse_site
from synapse_core.features.sae import SAEConfig, TopKSAE, load_sae

ROOT = Path(__file__).resolve().parents[2]
SAE = "layers.3.resid.post.sae"


def cli(*args, check=True):
    return run_cli(*args, check=check)


@pytest.fixture(scope="module")
def trained():
    try:
        corpus.check_installed()
    except Exception as exc:  # noqa: BLE001 - the message says how to install it
        pytest.skip(str(exc))
    out = json.loads(cli("features", "train", "--site", "layers.3.resid.post", "--d-sae", "256", "--k", "8",
                         "--tokens", "12800", "--contexts", "24", "--ctx-len", "64", "--batch-size", "256",
                         "--json").stdout)
    ev = json.loads(cli("features", "eval", SAE, "--contexts", "12", "--ctx-len", "64", "--ce-contexts", "2",
                        "--json").stdout)
    return out, ev


def test_train_eval_and_list(trained):
    out, ev = trained
    assert out["path"] == str(settings.subdir("features") / SAE) and out["steps"] == 50
    q = ev["quality"]
    assert q["ce_clean"] < q["ce_zero"] and 0 < q["l0"] <= 8
    listed = {s["name"]: s for s in json.loads(cli("features", "list", "--json").stdout)["saes"]}
    s = listed[SAE]
    assert (s["layer"], s["site"], s["d_sae"], s["k"], s["path"]) == (3, "resid.post", 256, 8, out["path"])
    assert s["loss_recovered"] == pytest.approx(q["loss_recovered"]) and s["l0"] == pytest.approx(q["l0"])


def test_show_top_contexts_rerun_to_the_same_activation(trained, bundled):
    out, _ = trained
    sae = load_sae(out["path"], dtype="float32")
    from synapse_core.features.catalog import densities

    f = int(densities(SAE).argmax())
    shown = json.loads(cli("features", "show", f"{SAE}.{f}", "--json").stdout)
    assert shown["feature"] == f and shown["label"] and shown["density"] > 0
    acts = [c["activation"] for c in shown["top_contexts"]]
    assert acts == sorted(acts, reverse=True) and len(acts) >= 2
    site = parse_site("layers.3.resid.post")
    for c in shown["top_contexts"][:3]:
        assert len(c["token_ids"]) == 64
        x = capture(bundled, torch.tensor([c["token_ids"]]), [site])[site][0, c["token_index"]]
        # the stored activations come from a float16 harvest
        with torch.no_grad():
            got = float(sae.encode(x)[f])
        assert got == pytest.approx(c["activation"], rel=0.02, abs=0.05)


def test_label_is_stored_with_who_and_when(trained):
    lab = json.loads(cli("features", "label", f"{SAE}.7", "commas in lists", "--by", "alice", "--json").stdout)
    assert (lab["feature"], lab["label"], lab["by"]) == (7, "commas in lists", "alice") and lab["at"].endswith("Z")
    shown = json.loads(cli("features", "show", f"{SAE}.7", "--json").stdout)
    assert (shown["label"], shown["label_by"], shown["label_at"]) == ("commas in lists", "alice", lab["at"])
    assert shown["auto_label"] != "commas in lists"


@pytest.mark.parametrize("args, message", [
    (("show", f"{SAE}.256"), "feature 256 does not exist: layers.3.resid.post.sae has features 0-255"),
    (("label", f"{SAE}.-1", "x", "--by", "a"), "feature -1 does not exist"),
    (("show", "layers.9.resid.post.sae.1"), "no SAE named 'layers.9.resid.post.sae'"),
    (("train", "--site", "layers.30.resid.post"), "layer 30 does not exist, the model has layers 0-29"),
    (("train", "--site", "layers.3.attn.q"), "unknown site 'layers.3.attn.q'"),
    (("label", f"{SAE}.1", "--llm"), "no label endpoint is configured: set SYNAPSE_LLM_URL"),
    (("label", f"{SAE}.1", "a city"), "say who gives the label (--by NAME)"),
])
def test_bad_input_is_named(trained, args, message):
    proc = cli("features", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_wrong_width_and_corrupt_weights_are_refused():
    home = settings.subdir("features")
    narrow = TopKSAE(SAEConfig(d_in=8, d_sae=16, k=2, hook_name="blocks.4.hook_resid_post"))
    narrow.save(home / "layers.4.resid.post.sae")
    proc = cli("features", "eval", "layers.4.resid.post.sae", "--contexts", "2", check=False)
    assert proc.returncode == 2 and "d_in = 8, but the model's resid.post at layer 4 has width 576" in proc.stderr
    broken = home / "layers.7.resid.post.sae"
    narrow.save(broken)
    (broken / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    proc = cli("features", "eval", "layers.7.resid.post.sae", "--contexts", "2", check=False)
    assert proc.returncode == 2 and "sae_weights.safetensors is corrupt" in proc.stderr
    os.remove(broken / "sae_weights.safetensors")
    proc = cli("features", "eval", "layers.7.resid.post.sae", "--contexts", "2", check=False)
    assert proc.returncode == 2 and "has no sae_weights.safetensors" in proc.stderr


def test_ablate_a_feature_from_the_command_line(trained):
    from synapse_core.features.catalog import densities

    f = int(densities(SAE).argmax())
    base = ("ablate", "--prompt", "The Eiffel Tower is in the city of", "--target", " Paris", "--no-masks",
            "--feature", f"{SAE}.{f}", "--json")
    nothing = json.loads(cli(*base, "--mode", "steer", "--value", "0").stdout)  # adds 0 x the direction
    assert nothing["ablated"]["target_prob"] == pytest.approx(nothing["clean"]["target_prob"], abs=1e-6)
    assert nothing["kl_divergence"] < 1e-9
    steered = json.loads(cli(*base, "--mode", "steer", "--value", "200").stdout)
    assert steered["kl_divergence"] > 1e-3 and steered["experiment"] != nothing["experiment"]
    proc = cli(*base, "--mode", "clamp", check=False)
    assert proc.returncode == 2 and "clamp needs a value" in proc.stderr
    proc = cli(*base, "--mode", "mean", check=False)
    assert proc.returncode == 2 and "a feature is zeroed, clamped or steered, not --mode mean" in proc.stderr
