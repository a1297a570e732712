"""The `ablate` and `sweep` commands on a tiny model saved as a local folder."""
import json

import pytest
from ablation_models import PROMPT, tiny_handle

from synapse_core.arch.spec import HeadMask, Intervention
from synapse_core.cli.main import main
from synapse_core.interventions.ablation import ablate


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    handle = tiny_handle("llama")
    handle.model.save_pretrained(folder)
    handle.tokenizer.save_pretrained(folder)
    return str(folder)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ablate_json_has_the_issue_shape(model_dir, capsys):
    code, out, err = _run(capsys, "ablate", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris",
                          "--contrast", "London", "--heads", "0.1,1.2", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload) == {"clean", "ablated", "kl_divergence", "experiment"}
    assert set(payload["clean"]) == set(payload["ablated"]) == {"target_prob", "logit_diff", "top_token"}
    ref = ablate(tiny_handle("llama"), PROMPT, "Paris",
                 [Intervention(0, "attn.head", "zero", 1), Intervention(1, "attn.head", "zero", 2)], "London")
    assert payload["ablated"]["logit_diff"] == pytest.approx(ref.intervened.logit_diff, abs=1e-4)
    assert payload["kl_divergence"] == pytest.approx(ref.kl_divergence, abs=1e-5)
    assert len(payload["experiment"]) == 16

    code, out2, err2 = _run(capsys, "ablate", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris",
                            "--contrast", "London", "--heads", "0.1,1.2", "--json")
    assert json.loads(out2)["experiment"] == payload["experiment"]
    assert "answered from the store" in err2


def test_ablate_without_contrast_has_null_logit_diff_and_records_masks(model_dir, capsys):
    code, out, err = _run(capsys, "ablate", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris",
                          "--components", "layers.0.mlp", "--mode", "mean", "--mask", "1.3", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["clean"]["logit_diff"] is None and payload["ablated"]["logit_diff"] is None
    assert "masked heads: 1.3" in err and "mean ablation" in err
    ref = ablate(tiny_handle("llama"), PROMPT, "Paris", [Intervention(0, "mlp", "mean")], masks=[HeadMask(1, 3)])
    assert payload["ablated"]["target_prob"] == pytest.approx(ref.intervened.target_prob, abs=1e-5)


def test_ablate_patch_takes_a_source_prompt(model_dir, capsys):
    code, out, err = _run(capsys, "ablate", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris",
                          "--heads", "1.0", "--mode", "patch", "--source-prompt", "the river in Rome", "--json")
    assert code == 0, err
    assert "aligned from the end" in err
    code, _, err = _run(capsys, "ablate", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris",
                        "--heads", "1.0", "--mode", "patch")
    assert code == 2 and "--source-prompt" in err


@pytest.mark.parametrize("argv, message", [
    (["--heads", "1.9"], "head 9 does not exist"),
    (["--heads", "x"], "'x' is not a head"),
    ([], "nothing to ablate"),
    (["--heads", "1.0", "--positions", "12"], "position 12 does not exist"),
])
def test_ablate_bad_input_exits_2_naming_the_value(model_dir, capsys, argv, message):
    code, _, err = _run(capsys, "ablate", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris", *argv)
    assert code == 2 and message in err


def test_sweep_json_has_the_issue_shape(model_dir, capsys):
    code, out, err = _run(capsys, "sweep", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris",
                          "--contrast", "London", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload) == {"metric", "clean", "effects", "seconds", "experiment"}
    assert payload["metric"] == "logit_diff" and len(payload["effects"]) == 8
    assert all(set(e) == {"layer", "head", "effect"} for e in payload["effects"])
    ref = ablate(tiny_handle("llama"), PROMPT, "Paris", [Intervention(1, "attn.head", "zero", 3)], "London")
    cell = next(e for e in payload["effects"] if (e["layer"], e["head"]) == (1, 3))
    assert cell["effect"] == pytest.approx(ref.delta("logit_diff"), abs=1e-4)
    assert payload["clean"] == pytest.approx(ref.clean.logit_diff, abs=1e-5)

    code, out, err = _run(capsys, "sweep", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris", "--json")
    assert json.loads(out)["metric"] == "log_prob"


def test_sweep_over_layers_and_text_output(model_dir, capsys):
    code, out, err = _run(capsys, "sweep", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris",
                          "--over", "layers", "--json")
    assert code == 0, err
    assert len(json.loads(out)["effects"]) == 6
    code, out, err = _run(capsys, "sweep", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris")
    assert code == 0 and "largest effects" in out and "experiment:" in out
