"""Batched sweeps against one forward pass per intervention, on tiny random-init models."""
import numpy as np
import pytest
import torch
from ablation_models import FAMILIES, OTHER, PROMPT, SHORT, ids_of, tiny_handle

from synapse_core.arch.spec import HeadMask, Intervention
from synapse_core.common.errors import BadInput
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.metrics import resolve_target
from synapse_core.interventions.ops import OpSettings, forward_last, prepare
from synapse_core.interventions.sweep import batched_scores, one_by_one_scores, sweep_heads, sweep_layers

KEYS = ("log_prob", "target_prob", "logit_diff", "kl")


def _both(handle, ivs, rows, masks=(), settings=OpSettings(), reuse_prefix=True):
    ids = ids_of(handle, PROMPT)
    target = resolve_target(handle, "Paris", "London")
    prepared = prepare(handle, ids, ivs, settings, masks)
    from synapse_core.hooks.masking import mask_fns

    clean = forward_last(handle, ids, mask_fns(masks))[0]
    batched, passes = batched_scores(handle, ids, prepared, target, masks, rows, reuse_prefix=reuse_prefix)
    single = one_by_one_scores(handle, ids, prepared, target, clean, masks)
    return batched, single, passes


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("positions", ["all", "last"])
def test_batched_head_sweep_equals_one_by_one(family, rows, positions):
    handle = tiny_handle(family)
    arch = handle.arch
    ivs = [Intervention(layer, "attn.head", "zero", head, positions)
           for layer in range(arch.n_layers) for head in range(arch.n_heads)]
    batched, single, passes = _both(handle, ivs, rows)
    assert passes == -(-len(ivs) // rows)
    for key in KEYS:
        assert torch.allclose(batched[key], single[key], atol=1e-5), key
    assert torch.equal(batched["top_id"], single["top_id"])
    assert float(single["kl"].max()) > 1e-3  # the heads do matter


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("rows", [5, 7, 40])
def test_rows_join_at_every_layer_of_a_deeper_model(family, rows):
    handle = tiny_handle(family, n_layers=5)
    ivs = [Intervention(layer, "attn.head", "zero", head) for layer in range(5) for head in range(4)]
    ivs += [Intervention(layer, site, "mean") for layer in (0, 2, 4) for site in ("attn", "mlp", "resid")]
    batched, single, passes = _both(handle, ivs, rows, settings=OpSettings(reference=(OTHER, SHORT)))
    assert passes == -(-len(ivs) // rows)
    for key in KEYS:
        assert torch.allclose(batched[key], single[key], atol=1e-5), key


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("op", ["zero", "mean", "patch", "steer"])
def test_batched_layer_sweep_equals_one_by_one(family, op):
    handle = tiny_handle(family)
    settings = OpSettings(reference=(OTHER, SHORT), scale=2.0, steer_prompts=(OTHER, SHORT))
    source = OTHER if op == "patch" else None
    ivs = [Intervention(layer, site, op, None, "all", source)
           for site in ("attn", "mlp", "resid") for layer in range(handle.arch.n_layers)]
    if op != "steer":
        ivs += [Intervention(1, "attn.head", op, 2, "last", source)]
    batched, single, _ = _both(handle, ivs, rows=4, settings=settings)
    for key in KEYS:
        assert torch.allclose(batched[key], single[key], atol=1e-5), (op, key)


def test_plain_batching_without_prefix_reuse_agrees():
    handle = tiny_handle("llama")
    ivs = [Intervention(layer, "attn.head", "zero", head) for layer in range(2) for head in range(4)]
    reused, _, _ = _both(handle, ivs, rows=8)
    plain, _, _ = _both(handle, ivs, rows=8, reuse_prefix=False)
    assert torch.allclose(reused["log_prob"], plain["log_prob"], atol=1e-5)


def test_sweep_heads_matches_ablate_cell_by_cell():
    handle = tiny_handle("llama")
    result = sweep_heads(handle, PROMPT, "Paris", "London", batch_rows=3)
    assert result.metric == "logit_diff" and result.effects.shape == (2, 4)
    for layer, head in [(0, 0), (0, 3), (1, 2)]:
        r = ablate(handle, PROMPT, "Paris", [Intervention(layer, "attn.head", "zero", head)], "London")
        assert result.effects[layer, head] == pytest.approx(r.delta("logit_diff"), abs=1e-4)
        assert result.kl[layer, head] == pytest.approx(r.kl_divergence, abs=1e-5)
        assert result.name(layer, head) == f"layers.{layer}.attn.head.{head}"
    assert result.clean == pytest.approx(r.clean.logit_diff, abs=1e-6)
    rows = result.effect_rows()
    assert len(rows) == 8 and {"layer", "head", "effect"} <= set(rows[0])


def test_sweep_without_contrast_scores_log_prob():
    result = sweep_heads(tiny_handle("gpt2"), PROMPT, "Paris")
    assert result.metric == "log_prob"
    assert np.allclose(result.effects, result.values - result.clean)
    with pytest.raises(BadInput, match="contrast"):
        sweep_heads(tiny_handle("gpt2"), PROMPT, "Paris", metric="logit_diff")


def test_a_masked_head_has_no_effect_and_the_mask_is_recorded():
    masks = (HeadMask(1, 2),)
    result = sweep_heads(tiny_handle("llama"), PROMPT, "Paris", "London", masks=masks)
    assert result.masks == masks
    assert result.effects[1, 2] == pytest.approx(0.0, abs=1e-6)  # already off in the clean run
    assert abs(result.effects).max() > 1e-3


def test_layer_sweep_shape_and_sites():
    result = sweep_layers(tiny_handle("llama"), PROMPT, "Paris", sites=("mlp", "resid"))
    assert result.kind == "layers" and result.effects.shape == (2, 2)
    assert result.name(1, 0) == "layers.0.resid"
    assert result.effect_rows()[0]["site"] == "mlp"
    with pytest.raises(BadInput, match="bogus"):
        sweep_layers(tiny_handle("llama"), PROMPT, "Paris", sites=("bogus",))


def test_long_prompts_take_fewer_rows_per_pass(monkeypatch):
    import synapse_core.interventions.sweep as sweep

    monkeypatch.setattr(sweep, "TOKEN_BUDGET", 16)  # 8-token prompt: 2 rows per pass
    result = sweep_heads(tiny_handle("llama"), PROMPT, "Paris", batch_rows=8)
    assert result.forward_passes == 4


@pytest.mark.parametrize("sweep", ["heads", "layers"])
def test_clean_value_comes_from_the_same_pass_so_a_no_op_reads_exactly_zero_in_bfloat16(tiny, sweep):
    """Masked heads are already off in the clean run: ablating them again changes nothing, and with
    the clean row from the same batched pass their effect is exactly 0, not bfloat16 rounding."""
    handle = tiny.make_handle("llama", dtype=torch.bfloat16)
    masks = tuple(HeadMask(layer, head) for layer in range(2) for head in range(4))  # every head off
    prompt = "the cat sat on the mat and the dog ran"
    calls, forward = [], handle.model.forward
    handle.model.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
    if sweep == "heads":
        result = sweep_heads(handle, prompt, "sat", "ran", masks=masks, batch_rows=8)
    else:  # steering by a zero vector adds nothing
        result = sweep_layers(handle, prompt, "sat", "ran", op="steer", masks=masks,
                              settings=OpSettings(direction=(0.0,) * tiny.D_MODEL))
    # no separate clean pass: the model ran once per batched pass (and, to steer, on nothing else)
    assert len(calls) == result.forward_passes
    assert np.all(result.effects == 0)
    assert np.all(result.kl == 0) and not result.top1_changed.any()
    assert result.clean == result.clean_metrics.logit_diff != 0
