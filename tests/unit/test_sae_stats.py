"""Feature statistics and the catalog, on a tiny synthetic SAE and activations."""
import numpy as np
import pytest
import torch

from synapse_core.common.errors import BadInput, StoreError
from synapse_core.features import catalog, stats
from synapse_core.features.evaluate import activation_figures
from synapse_core.features.sae import SAEConfig, TopKSAE

D, F, K, N_CTX, CTX, VOCAB = 8, 12, 3, 30, 6, 20


@pytest.fixture
def setup():
    gen = torch.Generator().manual_seed(0)
    sae = TopKSAE(SAEConfig(d_in=D, d_sae=F, k=K, hook_name="blocks.2.hook_resid_post"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        sae.W_enc[:, 11] = -5.0  # latent 11 never fires
        sae.b_enc[11] = -100.0
    acts = torch.randn(N_CTX, CTX, D, generator=gen).numpy().astype(np.float16)
    tokens = torch.randint(0, VOCAB, (N_CTX, CTX), generator=gen).numpy().astype(np.int32)
    unembed, norm_w = torch.randn(VOCAB, D, generator=gen), torch.rand(D, generator=gen) + 0.5
    arrays = stats.compute(sae, acts, tokens, unembed, norm_w, chunk=50)
    return sae, acts, tokens, unembed, norm_w, arrays


def _dense(sae, acts):
    with torch.no_grad():
        return sae.encode(torch.from_numpy(np.asarray(acts[:, 1:], dtype=np.float32)))  # (n_ctx, pos-1, F)


def test_density_max_mean_and_histogram(setup):
    sae, acts, _, _, _, a = setup
    z = _dense(sae, acts).reshape(-1, F)
    on = z > 0
    assert np.allclose(a["density"], on.float().mean(0).numpy())
    assert a["density"][11] == 0
    assert np.allclose(a["max_act"], z.max(0).values.numpy(), rtol=1e-6)
    mean = (z.sum(0) / on.sum(0).clamp_min(1)).numpy()
    assert np.allclose(a["mean_act"], mean, rtol=1e-5)
    assert np.array_equal(a["hist"].sum(1), on.sum(0).numpy())


def test_top_contexts_reproduce_their_activation(setup, tmp_path):
    sae, acts, tokens, _, _, a = setup
    z = _dense(sae, acts)
    for f in range(F - 1):
        tops = a["top_act"][f][a["top_ctx"][f] >= 0]
        assert len(tops) == min(stats.N_TOP, int((z[..., f] > 0).sum()))
        assert np.all(np.diff(tops) <= 0) and tops[0] == pytest.approx(float(a["max_act"][f]))
        for c, p, v in zip(a["top_ctx"][f], a["top_pos"][f], a["top_act"][f]):
            if c >= 0:
                assert p >= 1
                assert float(z[c, p - 1, f]) == pytest.approx(float(v))
    assert (a["top_ctx"][11] == -1).all()
    sae.save(tmp_path / "layers.2.resid.post.sae")
    labels = stats.auto_labels(a, lambda ids: f"t{ids[0]}")
    assert labels[11].startswith("dead")
    stats.save(tmp_path / "layers.2.resid.post.sae", a, labels, {"quality": {"l0": 3.0}})
    st = stats.FeatureStats(tmp_path / "layers.2.resid.post.sae")
    first = st.top_contexts(0)[0]
    assert first.token_ids == tokens[a["top_ctx"][0][0]].tolist() and first.token_index == a["top_pos"][0][0]
    with pytest.raises(BadInput, match="feature 12 does not exist"):
        st.label(12)


def test_promoted_tokens_and_cooccurrence(setup):
    sae, acts, _, unembed, norm_w, a = setup
    logits = (sae.W_dec.detach() * norm_w) @ unembed.T
    assert np.array_equal(a["promoted_ids"][:, 0], logits.argmax(1).numpy())
    assert np.array_equal(a["suppressed_ids"][:, 0], logits.argmin(1).numpy())
    on = (_dense(sae, acts).reshape(-1, F) > 0).float()
    inter = on.T @ on
    f, g = 0, int(a["cooc_idx"][0][0])
    jac = inter[f, g] / (inter[f, f] + inter[g, g] - inter[f, g])
    assert a["cooc_jaccard"][0][0] == pytest.approx(float(jac), rel=1e-5)
    assert g != 0


def test_activation_figures(setup):
    sae, acts, *_ = setup
    figs = activation_figures(sae, acts, chunk=40)
    assert figs.n_tokens == N_CTX * (CTX - 1)
    assert figs.l0 <= K and figs.dead_frac == pytest.approx(1 / F)
    x = torch.from_numpy(np.asarray(acts[:, 1:], dtype=np.float32)).reshape(-1, D).double()
    with torch.no_grad():
        err = (sae(x.float()).double() - x).pow(2).sum()
    assert figs.fve == pytest.approx(1 - float(err / (x - x.mean(0)).pow(2).sum()), rel=1e-6, abs=1e-6)


def test_catalog_lists_and_shows(setup, tmp_path):
    sae, acts, tokens, unembed, norm_w, a = setup
    folder = tmp_path / "layers.2.resid.post.sae"
    sae.save(folder)
    stats.save(folder, a, stats.auto_labels(a, lambda ids: f"t{ids[0]}"), {"quality": {"loss_recovered": 0.9}})
    other = TopKSAE(SAEConfig(d_in=D, d_sae=F, k=K, hook_name="blocks.0.hook_mlp_out"))
    other.save(tmp_path / "from-elsewhere")
    saes = catalog.list_saes([tmp_path])
    assert [s.name for s in saes] == ["layers.0.mlp.out.sae", "layers.2.resid.post.sae"]
    assert saes[1].quality == {"loss_recovered": 0.9} and saes[1].layer == 2 and saes[1].site == "resid.post"
    feat = catalog.show_feature("layers.2.resid.post.sae.0", [tmp_path])
    assert feat.feature == 0 and feat.density == pytest.approx(float(a["density"][0]))
    assert feat.top_contexts[0].activation == pytest.approx(feat.max_activation)
    assert all(name.startswith("layers.2.resid.post.sae.") for name, _ in feat.cooccurring)
    js = feat.to_json()
    assert js["top_contexts"][0]["token_ids"] == tokens[a["top_ctx"][0][0]].tolist()
    with pytest.raises(BadInput, match="feature 12 does not exist: layers.2.resid.post.sae has features 0-11"):
        catalog.show_feature("layers.2.resid.post.sae.12", [tmp_path])
    with pytest.raises(BadInput, match="not a feature name"):
        catalog.parse_feature("layers.2.resid.post")
    with pytest.raises(BadInput, match="no SAE named 'layers.9.resid.post.sae'"):
        catalog.show_feature("layers.9.resid.post.sae.1", [tmp_path])
    with pytest.raises(StoreError, match="no feature statistics"):
        catalog.show_feature("layers.0.mlp.out.sae.1", [tmp_path])
    with pytest.raises(BadInput, match="d_in = 8, but the model's resid.post at layer 2 has width 576"):
        catalog.load("layers.2.resid.post.sae", d_model=576, dirs=[tmp_path])
