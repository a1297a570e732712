"""Interventions on synthetic tensors and tiny random-init models: every operation on every target."""
import pytest
import torch
from ablation_models import FAMILIES, OTHER, PROMPT, SHORT, ids_of, tiny_handle

from synapse_core.arch.spec import HeadMask, Intervention
from synapse_core.common.errors import BadInput
from synapse_core.hooks.dispatch import active_handle_count
from synapse_core.hooks.masking import mask_fns
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.ops import (
    OpSettings,
    capture,
    forward_last,
    parse_intervention,
    parse_positions,
    prepare,
    resolve_positions,
    site_fn,
)

SITES = ("attn.head", "attn", "mlp", "resid")


def _iv(site, op="zero", layer=0, positions="all", source=None):
    return Intervention(layer, site, op, 1 if site == "attn.head" else None, positions, source)


# ---- names and positions ------------------------------------------------------------------------


def test_parse_intervention_round_trips_names():
    for name in ("layers.3.attn.head.1", "layers.3.attn", "layers.3.mlp", "layers.3.resid"):
        assert parse_intervention(name).name == name
    assert parse_intervention("3.1").name == "layers.3.attn.head.1"
    assert parse_intervention("2.mlp", op="mean").op == "mean"
    with pytest.raises(BadInput, match="layers.3.bogus"):
        parse_intervention("layers.3.bogus")


def test_positions_resolve_and_name_the_bad_one():
    assert resolve_positions("all", 4) == [0, 1, 2, 3]
    assert resolve_positions("last", 4) == [3]
    assert resolve_positions((0, -1, 3), 4) == [0, 3]
    assert parse_positions("0, 2,-1") == (0, 2, -1)
    assert parse_positions("LAST") == "last"
    with pytest.raises(BadInput, match="position 7 does not exist"):
        resolve_positions((7,), 4)
    with pytest.raises(BadInput, match="positions"):
        parse_positions("first")


# ---- site functions on synthetic tensors ---------------------------------------------------------


def test_zero_touches_only_the_chosen_head_and_positions():
    z = torch.randn(2, 5, 4, 3)  # (batch, pos, head, d_head)
    fn, _ = site_fn(Intervention(0, "attn.head", "zero", 2, (1, 4)), 5)
    out = fn(z)
    assert torch.all(out[:, [1, 4], 2] == 0)
    keep = torch.ones_like(z, dtype=torch.bool)
    keep[:, [1, 4], 2] = False
    assert torch.equal(out[keep], z[keep])


def test_mean_uses_per_position_values_or_one_vector():
    x = torch.randn(1, 3, 6)  # (batch, pos, d_model)
    per_pos = torch.arange(18.0).view(3, 6)
    out = site_fn(_iv("mlp", "mean"), 3, per_pos)[0](x)
    assert torch.equal(out[0], per_pos)
    overall = torch.full((6,), 7.0)
    out = site_fn(_iv("mlp", "mean", positions="last"), 3, overall)[0](x)
    assert torch.equal(out[0, 2], overall) and torch.equal(out[0, :2], x[0, :2])


def test_patch_aligns_from_the_end_and_says_so():
    x = torch.zeros(1, 5, 2)
    source = torch.arange(6.0).view(3, 2)  # a 3-token source
    fn, notes = site_fn(_iv("resid", "patch", source="s"), 5, source)
    out = fn(x)
    assert torch.equal(out[0, 2:], source)  # prompt positions 2, 3, 4 take source 0, 1, 2
    assert torch.equal(out[0, :2], x[0, :2])
    assert any("aligned from the end" in n for n in notes)
    assert any("2 position(s) have no source counterpart" in n for n in notes)
    with pytest.raises(BadInput, match="counterpart"):
        site_fn(_iv("resid", "patch", positions=(0,), source="s"), 5, source)


def test_steer_adds_the_direction():
    x = torch.randn(2, 4, 3)
    direction = torch.tensor([1.0, -2.0, 0.5])
    out = site_fn(_iv("resid", "steer", positions="last"), 4, direction)[0](x)
    assert torch.allclose(out[:, 3], x[:, 3] + direction)
    assert torch.equal(out[:, :3], x[:, :3])


# ---- every operation and target on tiny models ----------------------------------------------------


def _reader(found, key, head):
    def fn(z):  # (batch, pos, head, d_head); returns None: read only
        found[key] = z[0, :, head].clone()

    return fn


def _logits(handle, prompt, fns):
    return forward_last(handle, ids_of(handle, prompt), fns)[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", SITES)
def test_every_operation_changes_the_output(family, site):
    handle = tiny_handle(family)
    settings = OpSettings(reference=(OTHER, SHORT + " and the dog"), scale=3.0, steer_prompts=(OTHER, SHORT))
    ops = ["zero", "mean", "patch"] + (["steer"] if site != "attn.head" else [])
    for op in ops:
        iv = _iv(site, op, layer=0, source=OTHER if op == "patch" else None)
        r = ablate(handle, PROMPT, "Paris", [iv], settings=settings)
        assert r.kl_divergence > 1e-4, (family, site, op)
        assert r.interventions == (iv,)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", SITES)
def test_patching_a_prompt_into_itself_changes_nothing(family, site):
    handle = tiny_handle(family)
    clean = _logits(handle, PROMPT, {})
    for layer in range(handle.arch.n_layers):
        prepared = prepare(handle, ids_of(handle, PROMPT), [_iv(site, "patch", layer, source=PROMPT)])
        assert torch.allclose(_logits(handle, PROMPT, prepared.table()), clean, atol=1e-6), (site, layer)
        assert prepared.notes == ()  # same length: nothing to align


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_the_last_residual_stream_gives_the_source_logits(family):
    handle = tiny_handle(family)
    last = handle.arch.n_layers - 1
    prepared = prepare(handle, ids_of(handle, PROMPT), [_iv("resid", "patch", last, source=OTHER)])
    assert torch.allclose(_logits(handle, PROMPT, prepared.table()), _logits(handle, OTHER, {}), atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mean_ablation_writes_the_reference_mean(family):
    handle = tiny_handle(family)
    reference = (OTHER, PROMPT + " and")
    iv = _iv("attn.head", "mean", layer=1)
    prepared = prepare(handle, ids_of(handle, PROMPT), [iv], OpSettings(reference=reference))
    acts = [capture(handle, ids_of(handle, p), [(1, "attn.z")])[(1, "attn.z")][:, 1] for p in reference]
    expected = torch.stack([a[:8] for a in acts]).mean(0)  # both >= 8 tokens: per position
    seen = {}
    table = prepared.table()
    table[(1, "attn.z")].append(_reader(seen, "z", 1))
    forward_last(handle, ids_of(handle, PROMPT), table)
    assert torch.allclose(seen["z"], expected, atol=1e-6)
    assert "at each position" in prepared.notes[0]
    short = prepare(handle, ids_of(handle, PROMPT), [iv], OpSettings(reference=(SHORT,)))
    assert "all their positions" in short.notes[0]


def test_zeroing_every_head_equals_zeroing_the_attention_output():
    handle = tiny_handle("llama")  # no output-projection bias
    for layer in range(handle.arch.n_layers):
        heads = [Intervention(layer, "attn.head", "zero", h) for h in range(handle.arch.n_heads)]
        a = _logits(handle, PROMPT, prepare(handle, ids_of(handle, PROMPT), heads).table())
        b = _logits(handle, PROMPT, prepare(handle, ids_of(handle, PROMPT), [_iv("attn", layer=layer)]).table())
        assert torch.allclose(a, b, atol=1e-5)
        assert not torch.allclose(a, _logits(handle, PROMPT, {}), atol=1e-3)


@pytest.mark.parametrize("family", ["llama_bias", "gpt2"])
def test_zeroing_every_head_leaves_the_output_bias(family):
    handle = tiny_handle(family)
    layer = 0
    bias = handle.arch.out_proj[layer].bias
    heads = [Intervention(layer, "attn.head", "zero", h) for h in range(handle.arch.n_heads)]
    a = _logits(handle, PROMPT, prepare(handle, ids_of(handle, PROMPT), heads).table())
    b = _logits(handle, PROMPT, {(layer, "attn.out"): [lambda x: torch.zeros_like(x) + bias]})
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_zero_ablation_equals_zeroing_the_projection_columns(family):
    handle = tiny_handle(family)
    arch = handle.arch
    for layer in range(arch.n_layers):
        for head in range(arch.n_heads):
            prepared = prepare(handle, ids_of(handle, PROMPT), [Intervention(layer, "attn.head", "zero", head)])
            hooked = _logits(handle, PROMPT, prepared.table())
            weight = arch.out_proj[layer].weight
            cols = slice(head * arch.d_head, (head + 1) * arch.d_head)
            index = (cols, slice(None)) if arch.row.out_layout == "conv1d" else (slice(None), cols)
            saved = weight[index].clone()
            try:
                with torch.no_grad():
                    weight[index] = 0
                edited = _logits(handle, PROMPT, {})
            finally:
                with torch.no_grad():
                    weight[index] = saved
            assert torch.allclose(hooked, edited, atol=1e-5), (layer, head)


def test_masks_apply_to_the_activations_an_operation_reads():
    handle = tiny_handle("llama")
    mask = (HeadMask(0, 1),)
    iv = _iv("attn.head", "patch", layer=0, source=OTHER)  # patches head 1: masked in the source run
    masked = prepare(handle, ids_of(handle, PROMPT), [iv], masks=mask)
    z = {}
    table = masked.table()
    table[(0, "attn.z")].append(_reader(z, "z", 1))
    forward_last(handle, ids_of(handle, PROMPT), table)
    assert torch.all(z["z"] == 0)
    assert masked.masks == mask


def test_ablate_records_masks_and_applies_them_to_both_runs():
    handle = tiny_handle("llama")
    mask = (HeadMask(1, 2),)
    r = ablate(handle, PROMPT, "Paris", [_iv("mlp")], masks=mask)
    assert r.masks == mask
    plain_clean = torch.log_softmax(_logits(handle, PROMPT, {}), -1)[r.target.id]
    masked_clean = torch.log_softmax(_logits(handle, PROMPT, mask_fns(mask)), -1)[r.target.id]
    assert r.clean.log_prob == pytest.approx(float(masked_clean), abs=1e-6)
    assert abs(float(plain_clean) - float(masked_clean)) > 1e-4


def test_bad_requests_name_the_value_and_leave_no_hook():
    handle = tiny_handle("llama")
    with pytest.raises(BadInput, match="layer 5 does not exist"):
        ablate(handle, PROMPT, "Paris", [_iv("mlp", layer=5)])
    with pytest.raises(BadInput, match="head 7 does not exist"):
        ablate(handle, PROMPT, "Paris", [Intervention(0, "attn.head", "zero", 7)])
    with pytest.raises(BadInput, match="source prompt"):
        ablate(handle, PROMPT, "Paris", [_iv("mlp", "patch")])
    with pytest.raises(BadInput, match="steering needs a direction"):
        ablate(handle, PROMPT, "Paris", [_iv("resid", "steer")])
    with pytest.raises(BadInput, match="d_model is 32"):
        ablate(handle, PROMPT, "Paris", [_iv("resid", "steer")], settings=OpSettings(direction=(1.0, 2.0)))
    with pytest.raises(BadInput, match="steering adds a d_model vector"):
        ablate(handle, PROMPT, "Paris", [_iv("attn.head", "steer")], settings=OpSettings(direction=(0.0,) * 32))
    with pytest.raises(BadInput, match="position 9 does not exist"):
        ablate(handle, PROMPT, "Paris", [_iv("mlp", positions=(9,))])
    assert active_handle_count(handle.model) == 0


def test_a_saved_steering_vector_is_scaled():
    handle = tiny_handle("llama")
    direction = tuple(float(v) for v in torch.linspace(-1, 1, 32))
    r = ablate(handle, PROMPT, "Paris", [_iv("resid", "steer", layer=0, positions="last")],
               settings=OpSettings(direction=direction, scale=2.0))
    added = torch.tensor(direction) * 2.0
    expected = _logits(handle, PROMPT, {(0, "resid.post"): [lambda x: torch.cat([x[:, :-1], x[:, -1:] + added], 1)]})
    assert r.intervened.log_prob == pytest.approx(float(torch.log_softmax(expected, -1)[r.target.id]), abs=1e-5)
    assert "saved vector" in r.notes[0]
