"""token_influence(): integrated gradients on the token embeddings. Completeness (the scores add up to
log p(input) - log p(baseline)) is an identity of the method: it is tested exactly, against log p from
plain forward passes, and the per-token split against a dense Riemann sum of the same integral."""
import numpy as np
import pytest
import torch

from synapse_core import BadInput, HeadMask
from synapse_core.analysis.influence import TOLERANCE, baseline_token, token_influence
from synapse_core.hooks.dispatch import hooks
from synapse_core.hooks.masking import mask_fns

PROMPT_IDS = [2, 5, 9, 14, 3, 20]
GENERATED_IDS = [7, 11, 30]


def _log_prob(handle, embeds, target, masks=()):
    with torch.no_grad(), hooks(handle.model, handle.arch, mask_fns(masks)):
        logits = handle.model(inputs_embeds=embeds[None]).logits[0, -1]
    return float(torch.log_softmax(logits.double(), -1)[target])


def _ends(handle, source):
    """The real embeddings and the baseline: the pad token's embedding at every position ([PAD] here)."""
    embed = handle.model.get_input_embeddings()
    x = embed(torch.tensor(source)).detach()
    assert handle.tokenizer.decode([baseline_token(handle)]) == "[PAD]"
    b = embed(torch.tensor([baseline_token(handle)])).expand_as(x)
    return x, b.detach()


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
@pytest.mark.parametrize("masks", [(), (HeadMask(0, 1), HeadMask(1, 3, "attention"))])
def test_scores_add_up_to_the_change_in_log_p(tiny, family, masks):
    handle = tiny.make_handle(family)
    r = token_influence(handle, PROMPT_IDS, GENERATED_IDS, output_index=2, masks=masks)
    source = PROMPT_IDS + GENERATED_IDS[:2]
    assert r.scores.shape == (len(source),)
    assert r.source_tokens == tuple(handle.tokenizer.decode([i]) for i in source)
    assert r.output_token == handle.tokenizer.decode([GENERATED_IDS[2]])
    x, b = _ends(handle, source)
    log_p, log_p0 = _log_prob(handle, x, GENERATED_IDS[2], masks), _log_prob(handle, b, GENERATED_IDS[2], masks)
    assert r.log_prob == pytest.approx(log_p, abs=1e-5) and r.baseline_log_prob == pytest.approx(log_p0, abs=1e-5)
    change = log_p - log_p0
    error = abs(float(r.scores.sum()) - change) / abs(change)
    assert error <= TOLERANCE  # completeness within 1%
    assert r.completeness_error == pytest.approx(error, abs=1e-5)
    assert np.abs(r.scores).max() > 1e-3  # not trivially zero


def test_scores_match_a_dense_riemann_sum(tiny):
    """Per token, the adaptive rule agrees with 4,000 evenly spaced midpoints of the same integral."""
    handle = tiny.make_handle("llama", dtype=torch.float64)
    r = token_influence(handle, PROMPT_IDS, GENERATED_IDS, output_index=1, tolerance=1e-3)
    x, b = _ends(handle, PROMPT_IDS + GENERATED_IDS[:1])
    n = 4000
    alphas = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    points = (b[None] + alphas[:, None, None] * (x - b)[None]).requires_grad_(True)
    logits = handle.model(inputs_embeds=points).logits[:, -1]
    (grads,) = torch.autograd.grad(torch.log_softmax(logits, -1)[:, GENERATED_IDS[1]].sum(), points)
    dense = (grads.mean(0) * (x - b)).sum(-1).numpy()
    np.testing.assert_allclose(r.scores, dense, atol=2e-3 * np.abs(dense).max())
    assert r.completeness_error <= 1e-3


def test_masks_change_the_scores(tiny):
    handle = tiny.make_handle("llama")
    plain = token_influence(handle, PROMPT_IDS, GENERATED_IDS, output_index=1)
    masked = token_influence(handle, PROMPT_IDS, GENERATED_IDS, output_index=1, masks=["0.0", "1.2"])
    assert plain.scores.shape == masked.scores.shape == (len(PROMPT_IDS) + 1,)
    assert np.abs(plain.scores - masked.scores).max() > 1e-4


def test_first_output_token_is_attributed_to_the_prompt_only(tiny):
    handle = tiny.make_handle("llama")
    r = token_influence(handle, PROMPT_IDS, GENERATED_IDS, output_index=0)
    assert r.scores.shape == (len(PROMPT_IDS),)
    assert "[PAD]" in r.method and r.baseline == "pad" and r.points >= 16


@pytest.mark.parametrize("index", [3, -1])
def test_output_index_out_of_range(tiny, index):
    handle = tiny.make_handle("llama")
    with pytest.raises(BadInput, match=f"output token {index} does not exist"):
        token_influence(handle, PROMPT_IDS, GENERATED_IDS, output_index=index)


def test_unknown_baseline_is_refused(tiny):
    with pytest.raises(BadInput, match="baseline 'mean' is not one of pad"):
        token_influence(tiny.make_handle("llama"), PROMPT_IDS, GENERATED_IDS, output_index=0, baseline="mean")


def test_no_generated_tokens_is_said_plainly(tiny):
    handle = tiny.make_handle("llama")
    with pytest.raises(BadInput) as info:
        token_influence(handle, PROMPT_IDS, [], output_index=0)
    assert "generated no tokens" in str(info.value)
