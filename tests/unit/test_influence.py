"""token_influence(): gradient x input on the token embeddings, checked by finite differences."""
import numpy as np
import pytest
import torch

from synapse_core import BadInput, HeadMask
from synapse_core.hooks import hooks
from synapse_core.influence import token_influence
from synapse_core.masking import mask_fns

PROMPT_IDS = [2, 5, 9, 14, 3, 20]
GENERATED_IDS = [7, 11, 30]


def _log_prob(handle, embeds, target, masks=()):
    with torch.no_grad(), hooks(handle.model, handle.arch, mask_fns(masks)):
        logits = handle.model(inputs_embeds=embeds[None]).logits[0, -1]
    return float(torch.log_softmax(logits.double(), -1)[target])


def _finite_difference(handle, source, target, position, masks=(), eps=1e-2):
    """d log p / d t at t=0 of the embeddings with position's row scaled by (1 + t): grad . embedding.

    Norm layers compute in float32 even in a float64 model, so eps is large enough to rise above
    that rounding; the central difference's own error is O(eps^2)."""
    embeds = handle.model.get_input_embeddings()(torch.tensor(source)).detach()  # (pos, d_model)
    up, down = embeds.clone(), embeds.clone()
    up[position] *= 1 + eps
    down[position] *= 1 - eps
    return (_log_prob(handle, up, target, masks) - _log_prob(handle, down, target, masks)) / (2 * eps)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
@pytest.mark.parametrize("masks", [(), (HeadMask(0, 1), HeadMask(1, 3, "attention"))])
def test_scores_match_finite_differences(tiny, family, masks):
    handle = tiny.make_handle(family, dtype=torch.float64)  # finite differences want float64
    r = token_influence(handle, PROMPT_IDS, GENERATED_IDS, output_index=2, masks=masks)
    source = PROMPT_IDS + GENERATED_IDS[:2]
    assert r.scores.shape == (len(source),)
    assert r.source_tokens == tuple(handle.tokenizer.decode([i]) for i in source)
    assert r.output_token == handle.tokenizer.decode([GENERATED_IDS[2]])
    for position in (0, 3, len(source) - 1):
        expected = _finite_difference(handle, source, GENERATED_IDS[2], position, masks)
        assert r.scores[position] == pytest.approx(expected, rel=1e-3, abs=1e-5)
    embeds = handle.model.get_input_embeddings()(torch.tensor(source))
    assert r.log_prob == pytest.approx(_log_prob(handle, embeds, GENERATED_IDS[2], masks), abs=1e-5)
    assert np.abs(r.scores).max() > 1e-3  # not trivially zero


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


@pytest.mark.parametrize("index", [3, -1])
def test_output_index_out_of_range(tiny, index):
    handle = tiny.make_handle("llama")
    with pytest.raises(BadInput, match=f"output token {index} does not exist"):
        token_influence(handle, PROMPT_IDS, GENERATED_IDS, output_index=index)


def test_no_generated_tokens_is_said_plainly(tiny):
    handle = tiny.make_handle("llama")
    with pytest.raises(BadInput) as info:
        token_influence(handle, PROMPT_IDS, [], output_index=0)
    assert "0--1" not in str(info.value)
