"""The Top-K SAE module and its SAELens-format folders, on tiny synthetic SAEs."""
import json

import pytest
import torch

from synapse_core.common.errors import BadInput, StoreError
from synapse_core.features.sae import SAEConfig, TopKSAE, load_sae


def tiny(d_in=4, d_sae=6, k=2, **kw) -> TopKSAE:
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=k, hook_name="blocks.1.hook_resid_post", **kw))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return sae


def test_topk_by_hand():
    sae = TopKSAE(SAEConfig(d_in=2, d_sae=3, k=2, hook_name="blocks.0.hook_resid_post"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, 0.5, 0.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        sae.b_dec.copy_(torch.tensor([1.0, 1.0]))
    x = torch.tensor([[4.0, 2.0]])
    # x - b_dec = (3, 1); pre = (3, 1.5, 5) -> top 2 keeps latents 0 and 2
    z = sae.encode(x)
    assert torch.equal(z, torch.tensor([[3.0, 0.0, 5.0]]))
    # x_hat = 3 * (1, 0) + 5 * (1, 1) + (1, 1) = (9, 6)
    assert torch.allclose(sae(x), torch.tensor([[9.0, 6.0]]))
    assert torch.allclose(sae.decode(z), sae(x))


def test_relu_before_topk_leaves_negative_latents_off():
    sae = tiny(k=6)
    z = sae.encode(torch.randn(10, 4))
    assert (z >= 0).all()
    assert ((z > 0).sum(-1) <= 6).all()


def test_saved_folder_reloads_to_identical_outputs(tmp_path):
    sae = tiny()
    sae.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 2 and cfg["normalize_activations"] == "none"
    assert cfg["hook_name"] == "blocks.1.hook_resid_post" and cfg["apply_b_dec_to_input"] is True
    back = load_sae(tmp_path / "s")
    x = torch.randn(7, 4)
    assert torch.equal(back(x), sae(x))
    assert torch.equal(back.encode(x), sae.encode(x))


def test_half_precision_folder_keeps_its_dtype(tmp_path):
    sae = tiny().to_dtype("float16")
    sae.save(tmp_path / "h")
    back = load_sae(tmp_path / "h")
    assert back.W_enc.dtype == torch.float16
    assert json.loads((tmp_path / "h" / "cfg.json").read_text())["dtype"] == "float16"
    assert load_sae(tmp_path / "h", dtype="float32").W_dec.dtype == torch.float32


def test_transcoder_round_trip(tmp_path):
    tc = tiny(d_in=4, d_sae=6, k=2, d_out=3, hook_name_out="blocks.1.hook_mlp_out", apply_b_dec_to_input=False)
    tc.save(tmp_path / "t")
    back = load_sae(tmp_path / "t")
    x = torch.randn(5, 4)
    assert back(x).shape == (5, 3)
    assert torch.equal(back(x), tc(x))


def test_folder_written_by_another_tool_loads(tmp_path):
    """A SAELens-style folder with k only under activation_fn_kwargs and extra keys."""
    from safetensors.torch import save_file

    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": 4, "d_sae": 6, "architecture": "topk", "activation_fn_kwargs": {"k": 3},
        "hook_name": "blocks.0.hook_resid_post", "apply_b_dec_to_input": True, "dtype": "float32",
        "normalize_activations": "none", "model_name": "gpt2", "some_new_field": 1}))
    save_file({"W_enc": torch.randn(4, 6), "b_enc": torch.zeros(6), "W_dec": torch.randn(6, 4),
               "b_dec": torch.zeros(4)}, str(folder / "sae_weights.safetensors"))
    sae = load_sae(folder)
    assert sae.cfg.k == 3 and sae.cfg.model_name == "gpt2"
    assert ((sae.encode(torch.randn(2, 4)) > 0).sum(-1) <= 3).all()


def test_missing_weights_named(tmp_path):
    tiny().save(tmp_path / "s")
    (tmp_path / "s" / "sae_weights.safetensors").unlink()
    with pytest.raises(StoreError, match="has no sae_weights.safetensors"):
        load_sae(tmp_path / "s")


def test_corrupt_weights_named(tmp_path):
    tiny().save(tmp_path / "s")
    (tmp_path / "s" / "sae_weights.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(StoreError, match="corrupt"):
        load_sae(tmp_path / "s")


def test_shape_disagreeing_with_cfg_named(tmp_path):
    tiny().save(tmp_path / "s")
    cfg_path = tmp_path / "s" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["d_in"] = 5
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(StoreError, match=r"W_enc has shape \(4, 6\), cfg.json implies \(5, 6\)"):
        load_sae(tmp_path / "s")


def test_unsupported_architecture_and_normalisation(tmp_path):
    tiny().save(tmp_path / "s")
    cfg_path = tmp_path / "s" / "cfg.json"
    base = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**base, "architecture": "jumprelu"}))
    with pytest.raises(StoreError, match="'jumprelu' is not supported"):
        load_sae(tmp_path / "s")
    cfg_path.write_text(json.dumps({**base, "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(StoreError, match="fold the scaling"):
        load_sae(tmp_path / "s")


def test_not_a_folder(tmp_path):
    with pytest.raises(StoreError, match="no cfg.json"):
        load_sae(tmp_path)


def test_feature_and_width_checks_name_the_value():
    sae = tiny()
    sae.check_feature(5)
    with pytest.raises(BadInput, match="feature 6 does not exist: this SAE has features 0-5"):
        sae.check_feature(6)
    with pytest.raises(BadInput, match="d_in = 4, but layers.3.resid.post has width 576"):
        sae.check_input(576, "layers.3.resid.post")
