"""prepare(): wrapping an in-memory model into a ModelHandle."""
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from synapse_core.hooks.dispatch import ATTN_IMPLEMENTATION
from synapse_core.model.loading import prepare


def test_prepare_sets_the_model_up(tiny):
    model = tiny.make_model("gpt2").train()
    handle = tiny.make_handle("gpt2", model=model)
    assert handle.model is model and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert handle.family == "gpt2" and handle.max_context == 64
    assert handle.dtype == torch.float32 and handle.device == torch.device("cpu")
    assert handle.source == "in memory" and handle.name == "tiny-gpt2"


def test_fingerprint_follows_the_weights(tiny):
    a, b, c = (tiny.make_handle("llama", seed=s) for s in (0, 0, 1))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(a.fingerprint) == 16


def test_eos_ids_come_from_tokenizer_and_generation_config(tiny):
    model = tiny.make_model("llama")
    model.generation_config.eos_token_id = [3, 5]
    vocab = {"[UNK]": 0, "</s>": 1, "<|im_end|>": 2, "hi": 3}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>")
    handle = prepare(model, tokenizer, name="eos")
    assert handle.eos_ids == frozenset({1, 2, 3, 5})
    assert tiny.make_handle("llama").eos_ids == frozenset()


def test_fingerprint_follows_the_config(tiny):
    cfg = tiny.config_for("llama")
    cfg.rope_parameters = dict(cfg.rope_parameters, rope_theta=10.0)
    other = tiny.make_handle("llama", model=tiny.make_model("llama", config=cfg))
    same_weights = tiny.make_handle("llama")
    ids = tiny.sample_ids()
    with torch.no_grad():
        assert not torch.allclose(other.model(ids).logits, same_weights.model(ids).logits)  # they differ
    assert other.fingerprint != same_weights.fingerprint
