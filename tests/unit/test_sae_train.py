"""The Top-K trainer on synthetic sparse data: it learns, resumes exactly, and folds its scaling."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from synapse_core.common.errors import BadInput
from synapse_core.features.sae import SAEConfig, TopKSAE
from synapse_core.features.train import TrainConfig, TrainData, fold_scaling, train


def sparse_data(n=4096, d=16, n_atoms=32, active=3, seed=0, scale=50.0) -> TrainData:
    """Rows that are sums of `active` of `n_atoms` fixed directions, far from unit scale."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    x = np.zeros((n, d), dtype=np.float32)
    for i in range(n):
        pick = rng.choice(n_atoms, active, replace=False)
        x[i] = (rng.uniform(1, 2, active)[:, None] * atoms[pick]).sum(0) * scale + 3.0
    return TrainData(x.astype(np.float16), None, np.arange(n, dtype=np.int64))


CFG = TrainConfig(d_sae=64, k=4, lr=3e-3, batch_size=128, n_tokens=128 * 120, aux_k=8,
                  dead_after_tokens=1024, scale_tokens=1024, checkpoint_every=1000)


def sae_cfg(d=16, **kw):
    return SAEConfig(d_in=d, d_sae=CFG.d_sae, k=CFG.k, hook_name="blocks.0.hook_resid_post", **kw)


def fvu(sae: TopKSAE, data: TrainData) -> float:
    x = torch.from_numpy(np.asarray(data.x, dtype=np.float32))
    with torch.no_grad():
        err = (sae(x) - x).pow(2).sum(-1).mean()
    return float(err / (x - x.mean(0)).pow(2).sum(-1).mean())


def test_training_learns_sparse_structure():
    data = sparse_data()
    cfg = replace(CFG, lr=1e-2, n_tokens=128 * 400)
    res = train(sae_cfg(), cfg, data)
    assert res.steps_done == cfg.steps and not res.stopped
    assert fvu(res.sae, data) < 0.12  # explains more than 88% of the variance
    start = train(sae_cfg(), replace(CFG, n_tokens=128), data)
    assert fvu(start.sae, data) > 3 * fvu(res.sae, data)


def test_training_is_deterministic():
    data = sparse_data(n=1024)
    cfg = replace(CFG, n_tokens=128 * 20)
    a, b = train(sae_cfg(), cfg, data), train(sae_cfg(), cfg, data)
    for name, p in a.sae.state_dict().items():
        assert torch.equal(p, b.sae.state_dict()[name]), name


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    data = sparse_data(n=1024)  # 8 batches an epoch: the run crosses epochs and the stop point
    cfg = replace(CFG, n_tokens=128 * 30, checkpoint_every=7)
    whole = train(sae_cfg(), cfg, data)
    ckpt = tmp_path / "ckpt.pt"
    first = train(sae_cfg(), cfg, data, checkpoint=ckpt, stop_at_step=13)
    assert first.stopped and first.steps_done == 13
    calls = []
    rest = train(sae_cfg(), cfg, data, checkpoint=ckpt, progress=lambda s, n, m: calls.append(s))
    assert calls[0] == 14 and calls[-1] == 30 and rest.steps_done == 30
    for name, p in whole.sae.state_dict().items():
        assert torch.equal(p, rest.sae.state_dict()[name]), name


def test_should_stop_writes_a_checkpoint(tmp_path):
    data = sparse_data(n=1024)
    cfg = replace(CFG, n_tokens=128 * 10)
    ckpt = tmp_path / "c.pt"
    res = train(sae_cfg(), cfg, data, checkpoint=ckpt, should_stop=lambda: True)
    assert res.stopped and res.steps_done == 0 and ckpt.exists()
    with pytest.raises(BadInput, match="other settings"):
        train(sae_cfg(), replace(cfg, lr=1.0), data, checkpoint=ckpt)


def test_decoder_rows_stay_unit_norm_before_folding():
    data = sparse_data(n=1024)
    res = train(sae_cfg(), replace(CFG, n_tokens=128 * 10), data)
    # folded: rows have norm 1 / s for the one scale s
    norms = res.sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-4)


def test_fold_scaling_is_exact():
    sae = TopKSAE(sae_cfg())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    s = 0.037
    folded = fold_scaling(sae, s, s)
    x = torch.randn(9, 16) * 30
    assert torch.allclose(folded(x), sae(x * s) / s, atol=1e-4, rtol=1e-4)
    with pytest.raises(BadInput, match="one scale"):
        fold_scaling(sae, 1.0, 2.0)


def test_transcoder_trains_from_one_site_to_another():
    src = sparse_data(n=2048, d=16)
    x = np.asarray(src.x, dtype=np.float32)
    w = np.random.default_rng(3).normal(size=(16, 8)).astype(np.float32)
    y = np.maximum(x @ w, 0) * 0.1  # a fixed nonlinear "MLP"
    data = TrainData(src.x, y.astype(np.float16), src.rows)
    cfg = replace(CFG, n_tokens=128 * 200, lr=1e-2)
    tc_cfg = SAEConfig(d_in=16, d_sae=64, k=4, hook_name="blocks.0.ln2.hook_normalized", d_out=8,
                       hook_name_out="blocks.0.hook_mlp_out", apply_b_dec_to_input=False)
    res = train(tc_cfg, cfg, data)
    with torch.no_grad():
        pred = res.sae(torch.from_numpy(x))
    yt = torch.from_numpy(y)
    assert pred.shape == (2048, 8)
    assert float((pred - yt).pow(2).sum(-1).mean() / (yt - yt.mean(0)).pow(2).sum(-1).mean()) < 0.15


def test_bad_widths_named():
    data = sparse_data(n=256)
    with pytest.raises(BadInput, match="width 16, the SAE reads d_in = 32"):
        train(sae_cfg(d=32), CFG, data)
    with pytest.raises(BadInput, match="disagree"):
        train(sae_cfg(), replace(CFG, k=5), data)


def _autograd_loss(sae, cfg, x, y, dead):
    """The loss written plainly, for autograd to differentiate."""
    pre = sae.pre_acts(x)
    vals, idx = pre.topk(cfg.k, dim=-1)
    err = y - sae.decode_sparse(vals, idx)
    total_var = (y - y.mean(0)).pow(2).sum(-1).mean()
    loss = err.pow(2).sum(-1).mean() / total_var
    a_vals, a_idx = pre.masked_fill(~dead, 0.0).topk(min(cfg.aux_k, int(dead.sum())), dim=-1)
    e = err.detach()
    e_hat = (a_vals.unsqueeze(-1) * sae.W_dec[a_idx]).sum(-2)
    return loss + cfg.aux_coef * (e - e_hat).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean()


@pytest.mark.parametrize("transcoder", [False, True])
def test_hand_written_gradients_match_autograd(transcoder):
    from synapse_core.features.train import _step

    torch.manual_seed(0)
    d_out = 8 if transcoder else 16
    cfg_sae = SAEConfig(d_in=16, d_sae=64, k=4, hook_name="a", d_out=d_out if transcoder else None,
                        hook_name_out="b" if transcoder else None, apply_b_dec_to_input=not transcoder)
    sae = TopKSAE(cfg_sae)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape))
    x = torch.randn(32, 16)
    y = torch.randn(32, d_out) if transcoder else x
    cfg = replace(CFG, aux_k=8, dead_after_tokens=10)
    since = torch.full((64,), 100, dtype=torch.long)
    since[:20] = 0  # latents 20.. are dead (and stay dead unless they fire in this batch)
    loss, _ = _step(sae, cfg, x, y, since)
    manual = {n: p.grad.clone() for n, p in sae.named_parameters()}
    dead = since > cfg.dead_after_tokens
    sae.zero_grad()
    ref = _autograd_loss(sae, cfg, x, y, dead)
    ref.backward()
    assert abs(float(loss) - float(ref.detach())) < 1e-4 * abs(float(ref.detach()))
    for n, p in sae.named_parameters():
        assert torch.allclose(manual[n], p.grad, atol=1e-5, rtol=1e-4), n
