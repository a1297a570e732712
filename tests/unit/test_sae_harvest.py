"""Harvesting and splicing on tiny random-init models: what is captured is what the model computes,
the forward pass stops early, a stopped harvest resumes to the same files, and an SAE spliced in
with its error term leaves the logits unchanged."""
import numpy as np
import pytest
import torch

from synapse_core.common.errors import BadInput, StoreError
from synapse_core.features.evaluate import ce_figures, ce_loss, splice_fn
from synapse_core.features.harvest import ActivationStore, Site, capture, harvest, parse_site
from synapse_core.features.sae import SAEConfig, TopKSAE
from synapse_core.hooks import dispatch

D_MODEL, VOCAB = 32, 64  # the tiny models of tests/unit/conftest.py


def sample_ids(batch=2, pos=9, seed=1):
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def test_capture_equals_hidden_states(handle):
    ids = sample_ids(batch=2, pos=7)
    got = capture(handle, ids, [Site(0, "resid.post"), Site(1, "resid.post"), Site(1, "mlp.out")])
    with torch.no_grad():
        hs = handle.model(ids, output_hidden_states=True).hidden_states
    assert torch.allclose(got[Site(0, "resid.post")], hs[1], atol=1e-5)
    # (the last entry of hidden_states has the final norm applied, so layer 1 is not compared)
    assert not torch.allclose(got[Site(1, "resid.post")], got[Site(0, "resid.post")], atol=1e-3)
    assert got[Site(1, "mlp.out")].shape == (2, 7, D_MODEL)


def test_the_mlp_maps_harvested_mlp_in_to_mlp_out(handle, tmp_path):
    """A transcoder's site pair in every family: the layer's MLP run on the harvested mlp.in gives the
    harvested mlp.out (to float16 rounding); Gemma 2 and 3 normalise the MLP's output after it."""
    store = harvest(handle, ["layers.1.mlp.in", "layers.1.mlp.out"], _contexts(4, ctx=7), 4, tmp_path, ctx_len=7)
    x = torch.from_numpy(np.asarray(store.acts("layers.1.mlp.in"), dtype=np.float32))
    y = torch.from_numpy(np.asarray(store.acts("layers.1.mlp.out"), dtype=np.float32))
    arch = handle.arch
    with torch.no_grad():
        if arch.mlp_read[1] is arch.mlp[1]:
            y_hat = arch.mlp[1](x)
            y_hat = y_hat if arch.mlp_write[1] is arch.mlp[1] else arch.mlp_write[1](y_hat)
        else:  # OPT: fc1, activation, fc2 inline in the block
            block = arch.layers[1]
            y_hat = block.fc2(block.activation_fn(block.fc1(x)))
    torch.testing.assert_close(y_hat, y, atol=2e-2, rtol=2e-2)
    assert (y - y.mean((0, 1))).abs().max() > 0.1  # not a constant that any map would match


def test_forward_stops_after_the_last_site(llama, monkeypatch):
    calls = []
    last = llama.arch.layers[1]
    orig = last.forward
    monkeypatch.setattr(last, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k))
    capture(llama, sample_ids(), [Site(0, "resid.post")])
    assert calls == []
    capture(llama, sample_ids(), [Site(1, "attn.out")])
    assert calls == [1]
    assert dispatch.active_handle_count(llama.model) == 0


def test_bad_sites_are_named(llama):
    with pytest.raises(BadInput, match="layer 5 does not exist, the model has layers 0-1"):
        capture(llama, sample_ids(), [Site(5, "resid.post")])
    with pytest.raises(BadInput, match="unknown site 'layers.0.resid.pre'"):
        parse_site("layers.0.resid.pre")
    assert parse_site("blocks.12.hook_resid_post") == Site(12, "resid.post")
    assert parse_site("layers.3.mlp.out").hook_name == "blocks.3.hook_mlp_out"


def _contexts(n, ctx=6, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, ctx).astype(np.int32) for _ in range(n)]


def test_harvest_stops_and_resumes_to_the_same_files(llama, tmp_path):
    sites = ["layers.0.resid.post", "layers.1.attn.out"]
    whole = harvest(llama, sites, _contexts(10), 10, tmp_path / "a", ctx_len=6, batch_size=3)
    seen = []
    part = harvest(llama, sites, _contexts(10), 10, tmp_path / "b", ctx_len=6, batch_size=3,
                   progress=lambda d, n: seen.append(d), should_stop=lambda: len(seen) >= 2)
    assert part.n_done == 6
    done = harvest(llama, sites, _contexts(10), 10, tmp_path / "b", ctx_len=6, batch_size=3)
    assert done.n_done == 10
    assert np.array_equal(whole.tokens(), done.tokens())
    for s in sites:
        assert np.array_equal(whole.acts(s), done.acts(s))
    ids = torch.from_numpy(np.stack(_contexts(10))).long()
    ref = capture(llama, ids, [Site(0, "resid.post")])[Site(0, "resid.post")]
    assert np.allclose(done.acts(sites[0]), ref.numpy(), atol=2e-3 * float(ref.abs().max()))
    assert ActivationStore(tmp_path / "b", limit=4).acts(sites[0]).shape == (4, 6, D_MODEL)
    with pytest.raises(StoreError, match="different harvest"):
        harvest(llama, ["layers.1.resid.post"], _contexts(10), 10, tmp_path / "b", ctx_len=6)
    with pytest.raises(StoreError, match="has no site"):
        done.acts("layers.1.mlp.out")


def _random_sae(d=D_MODEL, d_sae=48, k=4, seed=0):
    sae = TopKSAE(SAEConfig(d_in=d, d_sae=d_sae, k=k, hook_name="blocks.0.hook_resid_post"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return sae


def test_splice_with_error_term_leaves_logits_unchanged(handle):
    ids = sample_ids(batch=2, pos=8)
    sae = _random_sae()
    with torch.no_grad():
        clean = handle.model(ids).logits
        with dispatch.hooks(handle.model, handle.arch, {(0, "resid.post"): [splice_fn(sae, "sae", keep_error=True)]}):
            same = handle.model(ids).logits
        with dispatch.hooks(handle.model, handle.arch, {(0, "resid.post"): [splice_fn(sae, "sae")]}):
            changed = handle.model(ids).logits
    assert torch.allclose(same, clean, atol=1e-5)
    assert not torch.allclose(changed, clean, atol=1e-3)
    assert torch.allclose(changed[:, 0], clean[:, 0], atol=1e-5)  # position 0 is never replaced


def test_ce_figures_agree_with_a_direct_computation(llama):
    tokens = np.stack(_contexts(4, ctx=8))
    sae = _random_sae()
    figs = ce_figures(llama, {"layers.0.resid.post": sae}, tokens, batch_size=3)["layers.0.resid.post"]
    ids = torch.from_numpy(tokens).long()
    s, n = ce_loss(llama, ids)
    assert figs["ce_tokens"] == n == 4 * 7
    assert figs["ce_clean"] == pytest.approx(s / n, rel=1e-5)
    with torch.no_grad():
        logits = llama.model(ids).logits
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    assert figs["ce_clean"] == pytest.approx(float(ref), rel=1e-5)
    assert figs["ce_zero"] != pytest.approx(figs["ce_clean"], rel=1e-3)
