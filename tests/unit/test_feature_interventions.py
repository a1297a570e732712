"""Feature interventions (zero, clamp, steer) on a tiny model through the Intervention spec, with
the SAE's error term kept: an edit on nothing leaves the logits unchanged."""
import pytest
import torch
from ablation_models import PROMPT, ids_of, tiny_handle

from synapse_core.arch.spec import Intervention
from synapse_core.common import settings
from synapse_core.common.errors import BadInput
from synapse_core.features.intervene import FeatureEdit, edit_fn, feature_intervention
from synapse_core.features.sae import SAEConfig, TopKSAE
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.ops import forward_last

SAE = "layers.1.resid.post.sae"
DEAD = 15  # never fires


@pytest.fixture(scope="module")
def sae():
    gen = torch.Generator().manual_seed(1)
    s = TopKSAE(SAEConfig(d_in=32, d_sae=16, k=4, hook_name="blocks.1.hook_resid_post"))
    with torch.no_grad():
        for p in s.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        s.b_enc[DEAD] = -1e4
    s.save(settings.subdir("features") / SAE)
    return s


def _explicit(sae, x, f, new):
    """decode(z') + (x - decode(z)) with z'_f = new(z_f): the definition, computed the long way."""
    z = sae.encode(x)
    z2 = z.clone()
    z2[..., f] = new(z[..., f])
    return sae.decode(z2) + (x - sae.decode(z))


def test_zero_clamp_and_steer_keep_the_error_term(sae):
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    z = sae.encode(x)
    f = int((z[:, 1:] > 0).sum((0, 1)).argmax())  # a feature that fires
    for edit, new in ((FeatureEdit(f, "zero"), lambda a: 0 * a), (FeatureEdit(f, "clamp", 3.0), lambda a: 0 * a + 3.0),
                      (FeatureEdit(f, "steer", 2.0), lambda a: a + 2.0)):
        out = edit_fn(sae, [edit], list(range(5)))(x)
        assert torch.equal(out[:, 0], x[:, 0])  # the separator position is never edited
        assert torch.allclose(out[:, 1:], _explicit(sae, x, f, new)[:, 1:], atol=1e-5)
        assert not torch.allclose(out[:, 1:], x[:, 1:], atol=1e-3)


def test_an_edit_on_nothing_leaves_the_logits_unchanged(sae):
    handle = tiny_handle("llama")
    ids = ids_of(handle, PROMPT)
    clean = forward_last(handle, ids, {})
    nothing = forward_last(handle, ids, {(1, "resid.post"): [edit_fn(sae, [], list(range(ids.shape[1])))]})
    assert torch.allclose(nothing, clean, atol=1e-5, rtol=0)
    r = ablate(handle, PROMPT, "Paris", [feature_intervention(f"{SAE}.{DEAD}", "zero")])
    assert torch.allclose(torch.tensor(r.intervened.target_prob), torch.tensor(r.clean.target_prob), atol=1e-6)
    assert r.kl_divergence < 1e-9


def test_ablate_names_the_feature_and_changes_the_output(sae):
    handle = tiny_handle("llama")
    ids = ids_of(handle, PROMPT)
    iv = feature_intervention(f"{SAE}.3", "steer", 5.0, positions="last")
    assert iv == Intervention(1, "resid", "steer", None, "last", None, f"{SAE}.3", 5.0) and iv.name == f"{SAE}.3"
    r = ablate(handle, PROMPT, "Paris", [iv])
    assert r.names == (f"{SAE}.3",) and r.kl_divergence > 1e-4
    assert any("error term kept" in n for n in r.notes)
    assert ids.shape[1] > 1


@pytest.mark.parametrize("call, message", [
    (lambda: feature_intervention(f"{SAE}.16"), "feature 16 does not exist: layers.1.resid.post.sae has features 0-15"),
    (lambda: feature_intervention(f"{SAE}.2", "clamp"), "clamp needs a value"),
    (lambda: feature_intervention(f"{SAE}.2", "mean"), "a feature is zeroed, clamped or steered"),
    (lambda: feature_intervention("layers.0.mlp.out.sae.2"), "no SAE named 'layers.0.mlp.out.sae'"),
    (lambda: Intervention(1, "resid", "clamp"), "operation 'clamp' is not one of"),
])
def test_bad_feature_interventions_are_named(sae, call, message):
    with pytest.raises(BadInput, match=message):
        call()


def test_feature_activity_lists_the_strongest_features_at_each_token(sae):
    from synapse_core.features.activity import feature_activity
    from synapse_core.features.harvest import capture, parse_site

    handle = tiny_handle("llama")
    ids = ids_of(handle, PROMPT)[0].tolist()
    act = feature_activity(handle, ids, [SAE], top=2)
    site = parse_site("layers.1.resid.post")
    with torch.no_grad():
        z = sae.encode(capture(handle, torch.tensor([ids]), [site])[site][0])  # (pos, d_sae)
    assert [r.position for r in act.per_token] == list(range(1, len(ids)))
    for r in act.per_token:
        best = z[r.position].topk(2)
        assert [f for f, _ in r.features] == best.indices.tolist()
        assert [a for _, a in r.features] == pytest.approx(best.values.tolist())
        assert r.token == ids[r.position]
