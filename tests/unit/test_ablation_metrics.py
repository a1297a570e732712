"""Next-token metrics: synthetic logits and the tiny model's tokenizer."""
import math

import pytest
import torch
from ablation_models import tiny_handle

from synapse_core.common.errors import BadInput
from synapse_core.interventions.metrics import (
    Target,
    batch_scores,
    check_metric,
    default_metric,
    kl_divergence,
    next_token_metrics,
    resolve_target,
    top_tokens,
)


def _target(contrast=True):
    return Target("b", 1, "b", "c" if contrast else None, 2 if contrast else None, "c" if contrast else None)


def test_kl_is_zero_for_equal_distributions_and_matches_the_formula():
    a = torch.tensor([2.0, 0.0, -1.0, 0.5])
    b = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert float(kl_divergence(a, a)) == pytest.approx(0.0, abs=1e-7)
    p, q = torch.softmax(a, -1), torch.softmax(b, -1)
    assert float(kl_divergence(a, b)) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    assert float(kl_divergence(a, b)) != pytest.approx(float(kl_divergence(b, a)), rel=1e-3)  # direction matters


def test_single_and_batch_metrics_agree():
    handle = tiny_handle("llama")
    logits = torch.randn(3, 64)
    target = _target()
    scores = batch_scores(logits, target, logits[0])
    for i in range(3):
        m = next_token_metrics(handle, logits[i], target)
        assert m.log_prob == pytest.approx(float(scores["log_prob"][i]), abs=1e-6)
        assert m.target_prob == pytest.approx(math.exp(m.log_prob), rel=1e-6)
        assert m.logit_diff == pytest.approx(float(logits[i, 1] - logits[i, 2]), abs=1e-6)
        assert m.top_id == int(scores["top_id"][i])
    assert not bool(scores["top1_changed"][0]) and float(scores["kl"][0]) == pytest.approx(0.0, abs=1e-7)
    assert "logit_diff" not in batch_scores(logits, _target(contrast=False), logits[0])


def test_metric_names_and_defaults():
    assert default_metric(_target()) == "logit_diff"
    assert default_metric(_target(contrast=False)) == "log_prob"
    with pytest.raises(BadInput, match="'accuracy'"):
        check_metric("accuracy")
    with pytest.raises(BadInput, match="contrast"):
        check_metric("logit_diff", _target(contrast=False))


def test_targets_warn_about_several_tokens_and_reject_a_contrast_equal_to_the_target():
    handle = tiny_handle("llama")
    t = resolve_target(handle, "Paris London", "Rome")
    assert t.token == "Paris" and t.contrast_token == "Rome"
    assert any("2 tokens" in w and "first token" in w for w in t.warnings)
    with pytest.raises(BadInput, match="same token"):
        resolve_target(handle, "Paris", "Paris")


def test_top_tokens_are_sorted():
    handle = tiny_handle("llama")
    logits = torch.arange(64.0)
    top = top_tokens(handle, logits, 3)
    assert [t.id for t in top] == [63, 62, 61] and top[0].prob > top[1].prob
    with pytest.raises(BadInput):
        top_tokens(handle, logits, 0)
