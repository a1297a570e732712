"""discover() and head_weights() on every family in the adapter table."""
import pytest
import torch
import transformers as tf

from synapse_core.arch.adapters import FAMILIES, discover
from synapse_core.common.errors import BadInput, UnsupportedModel


def test_every_family_has_a_tiny_model(tiny):
    assert set(tiny.FAMILY_NAMES) == set(FAMILIES)


def test_discover_reads_the_config(handle, tiny):
    arch, cfg = handle.arch, handle.model.config
    assert arch.family == cfg.model_type
    assert arch.n_layers == tiny.N_LAYERS == len(arch.layers) == len(arch.attn) == len(arch.out_proj) == len(arch.mlp)
    assert arch.n_heads == tiny.N_HEADS
    expected_kv = 2 if arch.family in tiny.GQA_FAMILIES else tiny.N_HEADS
    assert arch.n_kv_heads == expected_kv
    assert arch.d_head == tiny.D_HEAD
    assert arch.d_model == tiny.D_MODEL
    assert arch.d_vocab == tiny.VOCAB


def test_head_weights_shapes(handle, tiny):
    arch = handle.arch
    h, d, dm = tiny.N_HEADS, tiny.D_HEAD, tiny.D_MODEL
    for layer in range(arch.n_layers):
        w = arch.head_weights(layer)
        assert set(w) == {"W_Q", "W_K", "W_V", "W_O"}
        assert w["W_Q"].shape == (h, d, dm)
        assert w["W_K"].shape == (h, d, dm)
        assert w["W_V"].shape == (h, d, dm)
        assert w["W_O"].shape == (h, dm, d)


def test_head_weights_w_o_is_the_output_projection_slice(handle):
    arch = handle.arch
    weight = arch.out_proj[1].weight.detach()
    linear = weight.t() if arch.row.out_layout == "conv1d" else weight  # (d_model, head * d_head)
    w_o = arch.head_weights(1)["W_O"]
    d = arch.d_head
    for head in range(arch.n_heads):
        torch.testing.assert_close(w_o[head], linear[:, head * d:(head + 1) * d], rtol=0, atol=0)


def test_gqa_key_value_heads_are_shared_by_their_query_group(tiny):
    arch = tiny.make_handle("llama").arch
    w = arch.head_weights(0)
    # 4 query heads over 2 kv heads: heads 0,1 read kv head 0 and heads 2,3 read kv head 1
    torch.testing.assert_close(w["W_K"][0], w["W_K"][1])
    torch.testing.assert_close(w["W_V"][2], w["W_V"][3])
    assert not torch.equal(w["W_V"][1], w["W_V"][2])
    torch.testing.assert_close(w["W_K"][2], arch.attn[0].k_proj.weight[8:16])


@pytest.mark.parametrize("config, family", [
    (tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   is_decoder=True), "bert"),
    (tf.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4), "t5"),
])
def test_unsupported_family_is_named(config, family):
    model = tf.AutoModelForCausalLM.from_config(config) if family == "bert" else tf.T5ForConditionalGeneration(config)
    with pytest.raises(UnsupportedModel, match=repr(family)) as info:
        discover(model)
    assert "llama" in str(info.value)  # and says what is supported


def test_unsupported_model_is_refused_before_prepare_changes_it(tiny):
    from synapse_core.model.loading import prepare

    model = tf.AutoModelForCausalLM.from_config(
        tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, is_decoder=True))
    before = model.config._attn_implementation
    with pytest.raises(UnsupportedModel, match="bert"):
        prepare(model, tiny.make_tokenizer(), name="bert")
    assert model.config._attn_implementation == before


def test_check_head_names_the_bad_value(llama):
    with pytest.raises(BadInput, match="head 4 does not exist: layer 1 has heads 0-3"):
        llama.arch.check_head(1, 4)
    with pytest.raises(BadInput, match="layer 2 does not exist: the model has layers 0-1"):
        llama.arch.check_head(2, 0)
    with pytest.raises(BadInput, match="head -1"):
        llama.arch.check_head(0, -1)
