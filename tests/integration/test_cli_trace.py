"""`synapse trace --json`: the fidelity, probability and influence keys."""
import json

import pytest
from cli_helpers import run_cli

pytestmark = pytest.mark.slow  # integrated gradients under sampling: the slow tier (make test-slow)


def test_trace_json_reports_fidelity_probabilities_and_influence_completeness():
    proc = run_cli("trace", "--prompt", "The capital of Australia is the city of", "--max-new-tokens", "2",
                   "--mask", "3.1", "--mask-level", "attention", "--temperature", "0.8", "--top-k", "5", "--seed",
                   "2", "--influence", "0", "--json")
    out = json.loads(proc.stdout)
    fidelity = out["fidelity"]
    assert fidelity["argmax_agreement"] == 1.0 and fidelity["max_logit_diff"] < 1e-3
    assert fidelity["masks_verified"] is True and fidelity["unverified_masks"] == []
    assert out["head_activity"][3][1] == 0.0
    # sampled at temperature 0.8 over the top 5: that distribution is sharper than the model's own
    assert len(out["sampled_probs"]) == len(out["model_probs"]) == 2
    assert out["sampled_probs"][0] > out["model_probs"][0] > 0
    path = out["thought_path"]
    assert path["depth"] == sum(h["share"] > path["depth_share_threshold"] for h in path["heads"])
    inf = out["influence"]
    change = inf["log_prob"] - inf["baseline_log_prob"]
    assert abs(sum(inf["scores"]) - change) / abs(change) <= 0.01 + 1e-4  # scores rounded to 6 places
    assert inf["completeness_error"] <= 0.01
    assert inf["baseline"] == "pad" and len(inf["tokens"]) == len(out["prompt_tokens"])
