"""Trace on the real bundled model (SmolLM2-135M-Instruct)."""
import numpy as np
import pytest
import torch

from synapse_core import BadInput, HeadMask, Sampling
from synapse_core.analysis.influence import token_influence
from synapse_core.analysis.trace import trace
from synapse_core.experiments.records import list_experiments
from synapse_core.experiments.store import ResultStore
from synapse_core.experiments.traces import load_trace, run_trace, trace_experiment_config
from synapse_core.hooks.dispatch import active_handle_count, hooks
from synapse_core.hooks.masking import mask_fns

EIFFEL = "The Eiffel Tower is in the city of"


def test_bundled_model_shape(bundled):
    arch = bundled.arch
    assert (arch.family, arch.n_layers, arch.n_heads, arch.n_kv_heads, arch.d_head) == ("llama", 30, 9, 3, 64)
    assert bundled.source in ("gguf (converted)", "safetensors cache")


def test_eiffel_tower_generates_paris(bundled):
    result = trace(bundled, EIFFEL, max_new_tokens=3)
    assert result.generated_tokens[0] == " Paris"
    assert result.model_probs[0] > 0.5 and result.sampled_probs == (1.0, 1.0, 1.0)
    assert result.fidelity.argmax_agreement == 1.0 and result.fidelity.masks_verified
    assert result.fidelity.max_logit_diff < 1e-3
    assert result.step_activity.shape == (3, 30, 9)
    assert result.attention.shape == (3, 30, 9, len(result.prompt_ids) + 2)
    # each captured attention row is a distribution over the keys seen at that step
    sums = result.attention.sum(-1)
    assert np.allclose(sums, 1.0, atol=1e-4)
    assert result.thought_path.nodes[0] == "Prompt_Ingress" and result.thought_path.nodes[-1] == "Response_Egress"
    assert len(result.thought_path.edges) == 31 and 0 < result.thought_path.depth < 30
    assert active_handle_count(bundled.model) == 0


def test_ioi_prompt_prefers_mary(bundled):
    result = trace(bundled, "When Mary and John went to the store, John gave a drink to", max_new_tokens=1)
    assert result.generated_tokens[0] == " Mary"
    assert result.model_probs[0] > 0.8


def test_masked_head_reads_zero_and_changes_logits(bundled):
    clean = trace(bundled, EIFFEL, max_new_tokens=2)
    top = clean.top_heads[0]
    masked = trace(bundled, EIFFEL, max_new_tokens=2, masks=[HeadMask(top.layer, top.head)])
    assert masked.step_activity[:, top.layer, top.head].max() == 0.0
    assert clean.step_activity[:, top.layer, top.head].min() > 0.0
    assert masked.model_probs[0] != pytest.approx(clean.model_probs[0], abs=1e-6)
    assert masked.fidelity.masks_verified
    assert [f"{m.layer}.{m.head}" for m in masked.masked_heads] == [f"{top.layer}.{top.head}"]


def test_projection_mask_equals_zeroed_weight_columns(bundled):
    ids = bundled.tokenizer(EIFFEL, return_tensors="pt").input_ids
    layer, head, d = 5, 4, bundled.arch.d_head
    with torch.inference_mode(), hooks(bundled.model, bundled.arch, mask_fns((HeadMask(layer, head),))):
        masked = bundled.model(ids).logits
    weight = bundled.arch.out_proj[layer].weight
    saved = weight[:, head * d:(head + 1) * d].clone()
    try:
        with torch.no_grad():
            weight[:, head * d:(head + 1) * d] = 0
        with torch.inference_mode():
            zeroed = bundled.model(ids).logits
    finally:
        with torch.no_grad():
            weight[:, head * d:(head + 1) * d] = saved
    torch.testing.assert_close(masked, zeroed, atol=1e-5, rtol=0)


def test_hooks_that_do_nothing_equal_plain_forward(bundled):
    ids = bundled.tokenizer(EIFFEL, return_tensors="pt").input_ids
    with torch.inference_mode():
        plain = bundled.model(ids).logits
        seen = []

        def observe(x):
            seen.append(1)

        observe.last_row = True  # reading pattern rows keeps the fused kernel: results stay bit-equal
        fns = {(layer, site): [observe] for layer in range(30)
               for site in ("attn.z", "attn.pattern", "attn.out", "mlp.out", "resid.post")}
        with hooks(bundled.model, bundled.arch, fns):
            hooked = bundled.model(ids).logits
    assert len(seen) == 30 * 5
    torch.testing.assert_close(hooked, plain, atol=0, rtol=0)


def test_sampling_is_reproducible_with_a_seed(bundled):
    a = trace(bundled, EIFFEL, 6, sampling=Sampling(temperature=1.0, seed=7), capture_attention=False)
    b = trace(bundled, EIFFEL, 6, sampling=Sampling(temperature=1.0, seed=7), capture_attention=False)
    assert a.generated_ids == b.generated_ids


def test_token_influence_adds_up_to_the_change_in_log_p(bundled):
    result = trace(bundled, "The capital of Australia is the city of", max_new_tokens=1, capture_attention=False)
    influence = token_influence(bundled, result.prompt_ids, result.generated_ids, 0)
    assert influence.output_token == " Sydney"
    assert len(influence.scores) == len(result.prompt_ids)
    assert influence.log_prob == pytest.approx(np.log(result.model_probs[0]), abs=1e-3)
    change = influence.log_prob - influence.baseline_log_prob
    assert influence.completeness_error == pytest.approx(abs(influence.scores.sum() - change) / abs(change), abs=1e-4)
    assert influence.completeness_error <= 0.01


def test_lineage_depth_changes_with_the_input(bundled):
    depths = {trace(bundled, prompt, 2, capture_attention=False).thought_path.depth
              for prompt in (EIFFEL, "When Mary and John went to the store, John gave a drink to",
                             "The capital of Australia is the city of")}
    assert len(depths) > 1


def test_bad_input_is_refused_with_a_clear_message(bundled):
    with pytest.raises(BadInput, match="empty"):
        trace(bundled, "   ", 3)
    with pytest.raises(BadInput, match="head 9 does not exist: layer 3 has heads 0-8"):
        trace(bundled, EIFFEL, 3, masks=["3.9"])
    with pytest.raises(BadInput, match="layer 30 does not exist"):
        trace(bundled, EIFFEL, 3, masks=["30.0"])


def test_overlong_prompt_is_cut_with_a_warning(bundled, monkeypatch):
    monkeypatch.setattr(type(bundled), "max_context", property(lambda self: 16))
    result = trace(bundled, EIFFEL + " and the Colosseum is in the city of", 2, capture_attention=False)
    assert len(result.prompt_ids) == 14
    assert any("only the last 14 tokens" in w for w in result.warnings)


def test_same_trace_request_is_answered_from_the_store_and_listed_as_an_experiment(bundled, tmp_path):
    store = ResultStore(tmp_path / "results")
    cfg = trace_experiment_config(bundled, EIFFEL, 2, [], Sampling(), False)
    first = run_trace(bundled, cfg, store)
    second = run_trace(bundled, cfg, store)
    assert (first.from_cache, second.from_cache) == (False, True)
    assert second.hash == first.hash == cfg.hash and second.result.generated_ids == first.result.generated_ids
    masked = run_trace(bundled, trace_experiment_config(bundled, EIFFEL, 2, ["3.1"], Sampling(), False), store)
    assert masked.hash != first.hash and masked.result.masked_heads[0].head == 1
    listed, problems = list_experiments(store, kind="trace")
    assert problems == [] and {s.hash for s in listed} == {first.hash, masked.hash}
    assert any("Paris" in s.headline for s in listed)
    reopened = load_trace(store, first.hash)
    assert reopened.result.generated_ids == first.result.generated_ids and reopened.config == cfg


def test_last_row_attention_equals_full_eager_attention(bundled):
    ids = bundled.tokenizer(EIFFEL, return_tensors="pt").input_ids
    rows, full = {}, {}

    def read_row(layer):
        def fn(probs):  # (batch, head, 1, k_pos)
            rows[layer] = probs[0, :, -1].clone()
        fn.last_row = True
        return fn

    def read_full(layer):
        def fn(probs):  # (batch, head, q_pos, k_pos)
            full[layer] = probs[0].clone()
        return fn

    layers = (0, 11, 29)
    with torch.inference_mode():
        with hooks(bundled.model, bundled.arch, {(l, "attn.pattern"): [read_row(l)] for l in layers}):
            fast = bundled.model(ids).logits
        with hooks(bundled.model, bundled.arch, {(l, "attn.pattern"): [read_full(l)] for l in layers}):
            eager = bundled.model(ids).logits
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=0)
    for layer in layers:
        torch.testing.assert_close(rows[layer], full[layer][:, -1], atol=1e-5, rtol=0)
        assert torch.all(torch.triu(full[layer], diagonal=1) == 0)  # causal
