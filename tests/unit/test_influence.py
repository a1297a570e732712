"""token_influence(): gradient x input on the token embeddings, checked by forward-mode autodiff."""
import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwad
from torch.nn.attention import SDPBackend, sdpa_kernel

from synapse_core import BadInput, HeadMask
from synapse_core.analysis.influence import token_influence
from synapse_core.hooks.dispatch import hooks
from synapse_core.hooks.masking import mask_fns

PROMPT_IDS = [2, 5, 9, 14, 3, 20]
GENERATED_IDS = [7, 11, 30]


def _log_prob(handle, embeds, target, masks=()):
    with torch.no_grad(), hooks(handle.model, handle.arch, mask_fns(masks)):
        logits = handle.model(inputs_embeds=embeds[None]).logits[0, -1]
    return float(torch.log_softmax(logits.double(), -1)[target])


def _directional_derivative(handle, source, target, position, masks=()):
    """d log p / d t at t=0 of the embeddings with position's row scaled by (1 + t), by forward-mode
    autodiff: grad . embedding computed on a path independent of the backward pass under test.

    A finite difference is no reference here: its truncation error (O(eps^2)) and the float32
    rounding of the norm layers (divided by eps) together reach 1% of small scores, and the
    rounding differs between machines. Forward mode has neither; SDPA's fused kernels have no
    forward-mode derivative, so the math kernel runs instead (the same function)."""
    embeds = handle.model.get_input_embeddings()(torch.tensor(source)).detach()  # (pos, d_model)
    tangent = torch.zeros_like(embeds)
    tangent[position] = embeds[position]
    with (torch.no_grad(), sdpa_kernel(SDPBackend.MATH), hooks(handle.model, handle.arch, mask_fns(masks)),
          fwad.dual_level()):
        logits = handle.model(inputs_embeds=fwad.make_dual(embeds, tangent)[None]).logits[0, -1]
        log_p = torch.log_softmax(logits.double(), -1)[target]
        return float(fwad.unpack_dual(log_p).tangent)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
@pytest.mark.parametrize("masks", [(), (HeadMask(0, 1), HeadMask(1, 3, "attention"))])
def test_scores_match_forward_mode_derivatives(tiny, family, masks):
    handle = tiny.make_handle(family, dtype=torch.float64)  # finite differences want float64
    r = token_influence(handle, PROMPT_IDS, GENERATED_IDS, output_index=2, masks=masks)
    source = PROMPT_IDS + GENERATED_IDS[:2]
    assert r.scores.shape == (len(source),)
    assert r.source_tokens == tuple(handle.tokenizer.decode([i]) for i in source)
    assert r.output_token == handle.tokenizer.decode([GENERATED_IDS[2]])
    for position in (0, 3, len(source) - 1):
        expected = _directional_derivative(handle, source, GENERATED_IDS[2], position, masks)
        # both sides round inside the float32 norm layers (eps 1.2e-7 of scores of order 1), and
        # the scores are returned as float32: 1e-6 absolute bounds both
        assert r.scores[position] == pytest.approx(expected, rel=1e-4, abs=1e-6)
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
