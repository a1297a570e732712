"""A quarantined SAE feature on the bundled model: every later run subtracts it exactly as a direct
zero-ablation of that feature does, lifting the quarantine restores the clean logits exactly, and the
audit log keeps both changes. Uses the shipped SAE on the residual stream after layer 15."""
import json

import pytest
import torch

from synapse_core.analysis.lens import logit_lens
from synapse_core.arch.spec import FeatureMask
from synapse_core.common.errors import BadInput
from synapse_core.features.activity import feature_activity
from synapse_core.features.intervene import feature_intervention
from synapse_core.governance.featurestore import FeatureQuarantine, in_force
from synapse_core.governance.maskstore import MaskStore
from synapse_core.hooks.dispatch import hooks
from synapse_core.hooks.masking import mask_fns
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.featureops import feature_site_fn

PROMPT = "The Eiffel Tower is in the city of"
SAE = "layers.15.resid.post.sae"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path))
    return tmp_path


def logits(handle, fns) -> torch.Tensor:
    ids = handle.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode(), hooks(handle.model, handle.arch, fns):
        return handle.model(input_ids=ids, use_cache=False).logits[0].float()  # (pos, d_vocab)


@pytest.fixture(scope="module")
def strongest(bundled):
    """The feature of SAE with the largest activation on the prompt's last token."""
    act = feature_activity(bundled, bundled.tokenizer(PROMPT).input_ids, [SAE], top=1)
    index, _ = act.per_token[-1].features[0]
    return f"{SAE}.{index}"


def test_a_quarantined_feature_is_a_zero_ablation_in_every_later_run_and_lifting_it_restores(bundled, home, strongest):
    clean = logits(bundled, {})
    n_pos = clean.shape[0]
    iv = feature_intervention(strongest, "zero")
    direct_fn, _ = feature_site_fn(bundled, iv, list(range(n_pos)))
    direct = logits(bundled, {(iv.layer, "resid.post"): [direct_fn]})
    assert (direct - clean).abs().max() > 1e-2  # the feature matters here, or the identity would say nothing

    q = FeatureQuarantine()
    q.add(bundled, [strongest], reason="test", by="tester")
    masks = in_force(bundled)
    assert masks == [FeatureMask(15, strongest)]
    assert (logits(bundled, mask_fns(tuple(masks))) - direct).abs().max() < 1e-5
    # a run through the engine's own entry points: an ablation's clean side and the logit lens
    quarantined = ablate(bundled, PROMPT, " Paris", [iv], masks=masks)  # its clean side has the quarantine on
    zeroed = ablate(bundled, PROMPT, " Paris", [iv])
    assert abs(quarantined.clean.log_prob - zeroed.intervened.log_prob) < 1e-5
    lens = logit_lens(bundled, PROMPT, " Paris", masks=masks)
    assert abs(lens.probs[-1, -1] - torch.softmax(direct[-1], -1)[lens.token_id].item()) < 1e-5

    q.remove(bundled, [strongest], by="tester")
    assert in_force(bundled) == []
    assert torch.equal(logits(bundled, mask_fns(tuple(in_force(bundled)))), clean)
    audit = MaskStore().audit(bundled)
    assert [(r.action, r.heads, r.by) for r in audit] == [("add", (strongest,), "tester"),
                                                          ("remove", (strongest,), "tester")]


def test_bad_features_are_refused_by_name(bundled, home):
    q = FeatureQuarantine()
    with pytest.raises(BadInput, match="feature 99999 does not exist: layers.15.resid.post.sae has features 0-4607"):
        q.add(bundled, [f"{SAE}.99999"], reason="test")
    with pytest.raises(BadInput, match="no SAE named 'layers.9.resid.post.sae'"):
        q.add(bundled, ["layers.9.resid.post.sae.3"], reason="test")
    with pytest.raises(BadInput, match=f"feature {SAE}.3 is not quarantined"):
        q.remove(bundled, [f"{SAE}.3"])
    assert MaskStore().audit(bundled) == []


def test_cost_command_measures_a_feature_and_names_one_that_does_not_exist(bundled, home, strongest, capsys):
    from synapse_core.cli.main import main

    text = home / "text.txt"
    text.write_text("The Eiffel Tower is in Paris, the capital of France. " * 40)
    prompts = home / "prompts.txt"
    prompts.write_text("[capitals]\nThe Eiffel Tower is in the city of | Paris\nThe capital of Italy is | Rome\n")
    base = ["quarantine", "cost", "--model", "bundled", "--text", str(text), "--window", "64",
            "--prompt-set", str(prompts), "--json"]
    assert main([*base[:2], strongest, *base[2:]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["heads"] == [strongest] and out["levels"] == ["feature"]
    assert out["perplexity_after"] != out["perplexity_before"]  # the feature's part of the stream is gone
    (group,) = out["capabilities"]
    assert out["tokens"] > 64 and group["prompts"] == 2 and group["mean_kl"] > 0

    assert main([*base[:2], "0.6", f"{SAE}.99999", *base[2:]]) != 0
    err = capsys.readouterr().err
    assert f"feature 99999 does not exist: {SAE} has features 0-4607" in err


def test_quarantine_commands_add_list_and_remove_a_feature(bundled, home, strongest, capsys):
    from synapse_core.cli.main import main

    base = ["--model", "bundled", "--by", "tester", "--json"]
    assert main(["quarantine", "add", strongest, "--reason", "fires on ' Paris'", *base]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] == [strongest]
    assert main(["quarantine", "list", *base]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["masked_heads"] == [] and [f["feature"] for f in listed["masked_features"]] == [strongest]
    assert in_force(bundled) == [FeatureMask(15, strongest)]
    assert main(["trace", "--prompt", PROMPT, "--model", "bundled", "--max-new-tokens", "3", "--json"]) == 0
    traced = json.loads(capsys.readouterr().out)
    assert traced["masked_features"] == [strongest] and traced["fidelity"]["argmax_agreement"] == 1.0
    assert main(["quarantine", "remove", strongest, *base]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] == [strongest] and in_force(bundled) == []


def test_a_trace_generates_from_the_ablated_model_in_every_pass(bundled, strongest):
    """Generation runs the prompt, then one position a step after a KV cache, and the fidelity pass a chunk
    after the cached prompt: the feature is zeroed at every position but the sequence's first in each."""
    from synapse_core.analysis.trace import trace
    from synapse_core.interventions.featureops import feature_mask

    iv = feature_intervention(strongest, "zero")
    n_pos = len(bundled.tokenizer(PROMPT).input_ids)
    direct_fn, _ = feature_site_fn(bundled, iv, list(range(n_pos)))
    direct = torch.softmax(logits(bundled, {(iv.layer, "resid.post"): [direct_fn]})[-1], -1)
    r = trace(bundled, PROMPT, 4, masks=[feature_mask(strongest)])
    assert r.masked_features == (FeatureMask(15, strongest),) and r.masked_heads == ()
    assert r.generated_ids[0] == int(direct.argmax()) and abs(r.model_probs[0] - direct.max().item()) < 1e-5
    assert r.fidelity.argmax_agreement == 1.0 and r.fidelity.max_logit_diff < 1e-3
