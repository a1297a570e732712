"""Interventions on the bundled SmolLM2-135M-Instruct: exactness, identities, every operation and target."""
import pytest
import torch

from synapse_core.arch.spec import Intervention
from synapse_core.hooks.dispatch import active_handle_count
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.ops import OpSettings, forward_last, prepare
from synapse_core.model.tokens import encode_prompt

PROMPT = "The Eiffel Tower is located in the city of"
SOURCE = "The Colosseum is in the city of"  # 9 tokens, the prompt 10
SITES = ("attn.head", "attn", "mlp", "resid")


def _ids(handle, text=PROMPT):
    return encode_prompt(handle, text)[0]


def _logits(handle, fns, text=PROMPT):
    return forward_last(handle, _ids(handle, text), fns)[0]


def _iv(site, op="zero", layer=10, head=4, positions="all", source=None):
    return Intervention(layer, site, op, head if site == "attn.head" else None, positions, source)


@pytest.mark.parametrize("layer", [0, 14, 29])
def test_head_zero_ablation_equals_zeroing_the_projection_columns(bundled, layer):
    arch = bundled.arch
    o_proj = arch.out_proj[layer]
    assert o_proj.bias is None
    for head in (0, arch.n_heads // 2, arch.n_heads - 1):  # the first, a middle and the last column slice
        prepared = prepare(bundled, _ids(bundled), [Intervention(layer, "attn.head", "zero", head)])
        hooked = _logits(bundled, prepared.table())
        cols = slice(head * arch.d_head, (head + 1) * arch.d_head)
        saved = o_proj.weight[:, cols].clone()
        try:
            with torch.no_grad():
                o_proj.weight[:, cols] = 0
            edited = _logits(bundled, {})
        finally:
            with torch.no_grad():
                o_proj.weight[:, cols] = saved
        assert torch.allclose(hooked, edited, atol=1e-4), (layer, head, float((hooked - edited).abs().max()))
        assert not torch.allclose(hooked, _logits(bundled, {}), atol=1e-6), (layer, head)  # it did something


@pytest.mark.parametrize("layer", [3, 20])
def test_zeroing_every_head_equals_zeroing_the_attention_output(bundled, layer):
    heads = [Intervention(layer, "attn.head", "zero", h) for h in range(bundled.arch.n_heads)]
    a = _logits(bundled, prepare(bundled, _ids(bundled), heads).table())
    b = _logits(bundled, prepare(bundled, _ids(bundled), [_iv("attn", layer=layer)]).table())
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("site", SITES)
def test_patching_a_prompt_into_itself_changes_nothing(bundled, site):
    clean = _logits(bundled, {})
    for layer in (0, 15, 29):
        prepared = prepare(bundled, _ids(bundled), [_iv(site, "patch", layer, source=PROMPT)])
        assert torch.allclose(_logits(bundled, prepared.table()), clean, atol=1e-5), (site, layer)


@pytest.mark.parametrize("site", SITES)
def test_every_operation_on_every_target_moves_the_prediction(bundled, site):
    settings = OpSettings(scale=4.0, steer_prompts=(" Rome", " Paris"))
    ops = ("zero", "mean", "patch") + (("steer",) if site != "attn.head" else ())
    for op in ops:
        iv = _iv(site, op, layer=12, source=SOURCE if op == "patch" else None)
        r = ablate(bundled, PROMPT, " Paris", [iv], " London", settings=settings)
        assert r.kl_divergence > 1e-6, (site, op)
        assert r.intervened.logit_diff != pytest.approx(r.clean.logit_diff, abs=1e-5), (site, op)
        if op == "patch":
            assert any("aligned from the end" in n for n in r.notes)
        if op == "mean":
            assert any("reference prompts at each position" in n for n in r.notes)
    assert active_handle_count(bundled.model) == 0


def test_patching_the_last_residual_stream_carries_the_source_prediction(bundled):
    r = ablate(bundled, PROMPT, " Paris", [_iv("resid", "patch", layer=29, positions="last", source=SOURCE)], " Rome")
    source_logits = _logits(bundled, {}, SOURCE)
    assert r.intervened.top_id == int(source_logits.argmax())
    assert r.intervened.logit_diff < 0 < r.clean.logit_diff  # Rome now beats Paris
    assert r.top1_changed


def test_steering_towards_rome_raises_rome(bundled):
    settings = OpSettings(scale=2.0, steer_prompts=(SOURCE, PROMPT))
    r = ablate(bundled, PROMPT, " Rome", [_iv("resid", "steer", layer=12, positions="last")], " Paris",
               settings=settings)
    assert r.intervened.logit_diff > r.clean.logit_diff


def test_target_warnings_on_the_real_tokenizer(bundled):
    r = ablate(bundled, PROMPT, "Paris France", [_iv("mlp")])
    assert any("scored on its first token" in w for w in r.warnings)
    # the spaceless spelling is another token than the one the model predicts: both splits shown
    assert any("mind the leading space" in w and "' Paris France'" in w and "[' Paris', ' France']" in w
               for w in r.warnings)
    assert r.target.token == "Paris"
    assert [t.token for t in r.clean_top][0] == " Paris"
    spaced = ablate(bundled, PROMPT, " Paris", [_iv("mlp")])
    assert not any("leading space" in w for w in spaced.warnings)  # a well-formed target is not nagged
