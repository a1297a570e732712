"""Head masks: projection masking is the same as deleting the head's slice of the output projection,
and attention masking switches the same head off."""
import copy

import pytest
import torch

from synapse_core.arch.spec import HeadMask
from synapse_core.hooks.dispatch import hooks
from synapse_core.hooks.masking import mask_fns, merge_fns


def _logits(handle, ids, fns=None):
    with torch.no_grad(), hooks(handle.model, handle.arch, fns or {}):
        return handle.model(ids).logits


def _without_head(handle, layer, head):
    """A deep copy of the model with the head's output-projection weights zeroed."""
    model = copy.deepcopy(handle.model)
    proj = handle.arch.out_proj[layer]
    name = next(n for n, m in handle.model.named_modules() if m is proj)
    weight = model.get_submodule(name).weight
    d = handle.arch.d_head
    with torch.no_grad():
        if handle.arch.row.out_layout == "conv1d":  # GPT-2 Conv1D: weight is (head * d_head, d_model)
            weight[head * d:(head + 1) * d, :] = 0
        else:  # Linear: weight is (d_model, head * d_head)
            weight[:, head * d:(head + 1) * d] = 0
    return model


@pytest.mark.parametrize("layer, head", [(0, 1), (1, 3)])
def test_projection_mask_equals_zeroed_projection_weights(handle, tiny, layer, head):
    ids = tiny.sample_ids()
    masked = _logits(handle, ids, mask_fns((HeadMask(layer, head, "projection"),)))
    with torch.no_grad():
        edited = _without_head(handle, layer, head)(ids).logits
        plain = handle.model(ids).logits
    assert (masked - plain).abs().max() > 1e-3  # the head matters, so the check below means something
    torch.testing.assert_close(masked, edited, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("level", ["attention", "both"])
def test_attention_mask_equals_projection_mask(handle, tiny, level):
    # zero probabilities give a zero head output (biases on V are weighted by the probabilities too)
    ids = tiny.sample_ids()
    masks = (HeadMask(0, 2), HeadMask(1, 0))
    projection = _logits(handle, ids, mask_fns(masks))
    other = _logits(handle, ids, mask_fns(tuple(HeadMask(m.layer, m.head, level) for m in masks)))
    torch.testing.assert_close(other, projection, atol=1e-5, rtol=1e-5)


def test_mask_fns_zero_exactly_the_masked_heads(tiny):
    fns = mask_fns((HeadMask(0, 1), HeadMask(0, 3), HeadMask(1, 2, "attention"), HeadMask(1, 0, "both")))
    assert set(fns) == {(0, "attn.z"), (1, "attn.pattern"), (1, "attn.z")}
    z = torch.ones(2, 5, 4, 8)  # (batch, pos, head, d_head)
    out = fns[(0, "attn.z")][0](z)
    assert out[:, :, [1, 3]].abs().sum() == 0 and torch.all(out[:, :, [0, 2]] == 1)
    assert torch.all(z == 1)  # the input is not edited in place
    p = torch.ones(2, 4, 5, 5)  # (batch, head, q_pos, k_pos)
    out = fns[(1, "attn.pattern")][0](p)
    assert out[:, [0, 2]].abs().sum() == 0 and torch.all(out[:, [1, 3]] == 1)
    out = fns[(1, "attn.z")][0](z)
    assert out[:, :, 0].abs().sum() == 0 and torch.all(out[:, :, 1:] == 1)


def test_merge_fns_keeps_order():
    def a(t):
        return t

    def b(t):
        return t

    def c(t):
        return t

    merged = merge_fns({(0, "attn.z"): [a]}, {(0, "attn.z"): [b], (1, "mlp.out"): [c]})
    assert merged == {(0, "attn.z"): [a, b], (1, "mlp.out"): [c]}
