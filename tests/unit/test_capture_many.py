"""Reference activations of many prompts in padded batches equal those of each prompt run alone."""
import pytest
import torch
from conftest import VOCAB

from synapse_core.arch.spec import HeadMask
from synapse_core.hooks.dispatch import hooks
from synapse_core.interventions.ops import capture, capture_many


def _prompts(n=5, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (1, length), generator=gen) for length in (3, 9, 5, 12, 7)[:n]]


def test_padded_batches_equal_one_prompt_at_a_time(handle):
    keys = [(0, "attn.z"), (0, "mlp.out"), (1, "attn.out"), (1, "resid.post")]
    prompts = _prompts()
    together = capture_many(handle, prompts, keys, batch_size=3)  # two batches, padding in both
    for ids, got in zip(prompts, together):
        alone = capture(handle, ids, keys)
        for key in keys:
            assert got[key].shape == alone[key].shape
            torch.testing.assert_close(got[key], alone[key], rtol=1e-5, atol=1e-5)


def test_masks_apply_and_the_pass_stops_after_the_deepest_layer(llama):
    prompts = _prompts(3)
    seen = []
    with hooks(llama.model, llama.arch, {(1, "attn.z"): [lambda z: seen.append(1)]}):
        got = capture_many(llama, prompts, [(0, "attn.z")], masks=[HeadMask(0, 2)])
    assert seen == []  # layer 1 never ran
    for row in got:
        assert row[(0, "attn.z")][:, 2].abs().max() == 0.0 and row[(0, "attn.z")][:, 1].abs().max() > 0


@pytest.mark.parametrize("batch_size", [1, 16])
def test_each_prompt_keeps_its_own_length(llama, batch_size):
    prompts = _prompts()
    got = capture_many(llama, prompts, [(1, "resid.post")], batch_size=batch_size)
    assert [g[(1, "resid.post")].shape[0] for g in got] == [p.shape[1] for p in prompts]
