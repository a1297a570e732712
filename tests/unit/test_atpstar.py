"""AtP* (QK fix and GradDrop) on tiny random-init models: identities where the method is exact, and
its place in discovery."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synapse_core.analysis.atpstar import METHOD_STAR, _contributions, attribute_heads_star
from synapse_core.analysis.attribution import METHOD, attribute_heads
from synapse_core.analysis.discovery import discover, discovery_config
from synapse_core.arch.spec import HeadMask, Intervention
from synapse_core.common.errors import BadInput
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.metrics import resolve_target
from synapse_core.model.tokens import encode_prompt

PROMPT = "the cat sat on the mat and the dog ran to the"
TARGET, CONTRAST = "cat", "dog"


def _exact(handle, layer, head):
    return ablate(handle, PROMPT, TARGET, [Intervention(layer, "attn.head", "zero", head)], CONTRAST).delta("logit_diff")


def _qk_only_model(tiny):
    """Two float64 Llama layers where a layer-0 head reaches the metric only directly and through
    layer 1's attention pattern: layer 0 writes dims 0-15, layer 1's values read dims 16-31, no MLPs,
    no norm before layer 1 or the unembedding. The metric is then linear in layer 1's pattern."""
    model = tiny.make_model("llama", seed=3, dtype=torch.float64)
    inner = model.model
    inner.norm = torch.nn.Identity()
    inner.layers[1].input_layernorm = torch.nn.Identity()
    with torch.no_grad():
        for layer in inner.layers:
            layer.mlp.down_proj.weight.zero_()
        inner.layers[0].self_attn.o_proj.weight[16:] = 0
        inner.layers[1].self_attn.v_proj.weight[:, :16] = 0
    return tiny.make_handle("llama", model=model)


def test_the_qk_fix_is_exact_where_a_head_acts_only_through_a_later_softmax(tiny):
    handle = _qk_only_model(tiny)
    ids, _ = encode_prompt(handle, PROMPT)
    target = resolve_target(handle, TARGET, CONTRAST)
    star = attribute_heads_star(handle, ids, target, "logit_diff")
    plain = attribute_heads(handle, ids, target, "logit_diff")
    exact = np.array([_exact(handle, 0, h) for h in range(tiny.N_HEADS)])
    assert np.allclose(star.estimates[0].numpy(), exact, atol=1e-6)  # the softmax recomputed, not linearised
    assert np.abs(plain.estimates[0].numpy() - exact).max() > 1e-3  # plain attribution patching is not exact here
    assert np.abs(exact).min() > 1e-2


def test_graddrop_scores_are_the_mean_over_dropped_layers_of_the_estimate(tiny):
    """Two layers: dropping layer 1's gradient leaves a layer-0 head its direct path alone, and dropping
    layer 0 leaves layer 1's heads untouched; the score divides the sum by n_layers - 1 = 1."""
    handle = _qk_only_model(tiny)
    ids, _ = encode_prompt(handle, PROMPT)
    target = resolve_target(handle, TARGET, CONTRAST)
    star = attribute_heads_star(handle, ids, target, "logit_diff")
    unembed = handle.model.get_output_embeddings().weight
    direction = (unembed[target.id] - unembed[target.contrast_id]).float()
    z = {}
    from synapse_core.hooks.dispatch import hooks

    with torch.no_grad(), hooks(handle.model, handle.arch, {(0, "attn.z"): [lambda t: z.setdefault(0, t.clone())]}):
        handle.model(input_ids=ids)
    direct = -(_contributions(handle, 0, z[0])[:, -1] @ direction)  # (head,): the effect through the unembedding
    assert np.allclose(star.scores[0].numpy(), direct.abs().numpy(), atol=1e-6)
    assert np.allclose(star.scores[1].numpy(), star.estimates[1].abs().numpy(), atol=1e-9)


def test_last_layer_heads_have_no_later_softmax_to_fix_in_every_family(handle, tiny):
    ids = tiny.sample_ids(batch=1)
    target = resolve_target(handle, "cat", "dog")
    star = attribute_heads_star(handle, ids, target, "logit_diff")
    plain = attribute_heads(handle, ids, target, "logit_diff")
    last = handle.arch.n_layers - 1
    assert torch.allclose(star.estimates[last], plain.estimates[last], atol=1e-5)
    assert star.clean == pytest.approx(plain.clean, abs=1e-5)
    assert torch.isfinite(star.estimates).all() and torch.isfinite(star.scores).all()


def test_masked_heads_estimate_zero_under_atp_star(llama):
    ids, _ = encode_prompt(llama, PROMPT)
    target = resolve_target(llama, TARGET, CONTRAST)
    star = attribute_heads_star(llama, ids, target, "logit_diff", masks=(HeadMask(0, 1), HeadMask(1, 3)))
    assert star.estimates[0, 1] == 0 and star.estimates[1, 3] == 0
    assert star.scores[0, 1] == 0 and star.scores[1, 3] == 0


def test_discovery_ranks_by_atp_star_on_request(llama):
    star = discover(llama, discovery_config(llama, PROMPT, TARGET, CONTRAST, top_k_heads=2, verify_heads=3,
                                            ranking="atp*"))
    plain = discover(llama, discovery_config(llama, PROMPT, TARGET, CONTRAST, top_k_heads=2, verify_heads=3))
    assert star.method == METHOD_STAR and plain.method == METHOD
    ids, _ = encode_prompt(llama, PROMPT)
    scores = attribute_heads_star(llama, ids, resolve_target(llama, TARGET, CONTRAST), "logit_diff").scores
    best = sorted(((-float(scores[h.layer, h.head]), h.ref) for h in star.candidates))
    assert [h.estimate_rank for h in sorted(star.candidates, key=lambda h: h.estimate_rank)] == [1, 2, 3]
    assert {h.ref for h in star.candidates} == {ref for _, ref in best[:3]}
    with pytest.raises(BadInput, match="ranking 'exact'"):
        discovery_config(llama, PROMPT, TARGET, CONTRAST, ranking="exact")
