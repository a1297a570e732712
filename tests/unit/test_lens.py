"""The logit lens on tiny models of every family: its last row is the model's own next-token
distribution, ranks and probabilities agree, and a masked head changes what the lens reads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synapse_core.analysis.lens import logit_lens
from synapse_core.arch.spec import HeadMask
from synapse_core.common.errors import BadInput
from synapse_core.interventions.ops import forward_last

PROMPT = "the cat sat on the mat and the dog"


def test_last_row_is_the_models_own_prediction(handle):
    r = logit_lens(handle, PROMPT, "ran", top_k=3)
    ids = handle.tokenizer(PROMPT, return_tensors="pt").input_ids
    probs = torch.softmax(forward_last(handle, ids, {})[0], -1)
    assert r.probs.shape == (handle.arch.n_layers + 1, ids.shape[1])
    assert r.probs[-1, -1] == pytest.approx(float(probs[r.token_id]), abs=1e-5)
    assert r.ranks[-1, -1] == int((probs > probs[r.token_id]).sum())
    assert r.top_probs[-1, -1, 0] == pytest.approx(float(probs.max()), abs=1e-5)
    # the rank is 0 exactly where the token is the top token
    top_is_token = np.array([[row[0] == r.token for row in layer] for layer in r.top_tokens])
    assert ((r.ranks == 0) == top_is_token).all()


def test_default_token_is_the_prediction_and_masks_change_the_reading(llama):
    r = logit_lens(llama, PROMPT)
    assert r.ranks[-1, -1] == 0 and r.first_top_row() is not None
    masked = logit_lens(llama, PROMPT, r.token, masks=(HeadMask(1, 0), HeadMask(1, 1)))
    assert np.allclose(masked.probs[:2], r.probs[:2])  # embeddings and layer 0 are upstream of the masks
    assert not np.allclose(masked.probs[-1], r.probs[-1])


def test_bad_input(llama):
    with pytest.raises(BadInput, match="empty"):
        logit_lens(llama, " ", "ran")
    with pytest.raises(BadInput, match="top-k 0"):
        logit_lens(llama, PROMPT, "ran", top_k=0)


def test_last_row_is_the_models_next_token_distribution_at_every_position(handle):
    r = logit_lens(handle, PROMPT, "ran", top_k=2)
    ids = handle.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        probs = torch.softmax(handle.model(input_ids=ids, use_cache=False).logits[0].float(), -1)  # (pos, d_vocab)
    assert np.abs(r.probs[-1] - probs[:, r.token_id].numpy()).max() < 1e-5
    assert (r.ranks[-1] == (probs > probs[:, r.token_id:r.token_id + 1]).sum(-1).numpy()).all()
    assert np.abs(r.top_probs[-1, :, 0] - probs.max(-1).values.numpy()).max() < 1e-5


def test_token_ids_and_a_token_id_read_the_same_as_text(llama):
    by_text = logit_lens(llama, PROMPT, "ran")
    ids = llama.tokenizer(PROMPT).input_ids
    by_ids = logit_lens(llama, ids, token_id=by_text.token_id)
    assert by_ids.prompt_tokens == by_text.prompt_tokens and by_ids.token == by_text.token
    assert np.array_equal(by_ids.probs, by_text.probs) and np.array_equal(by_ids.ranks, by_text.ranks)
    with pytest.raises(BadInput, match="token id -1 does not exist"):
        logit_lens(llama, ids, token_id=-1)
    with pytest.raises(BadInput, match="no token ids"):
        logit_lens(llama, [])
