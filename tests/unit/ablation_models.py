"""Tiny random-init models for the ablation tests: no files, no network.

A word-level tokenizer of 64 tokens and 2-layer, 4-head models (d_model 32): Llama with
grouped-query attention (2 key/value heads) and no output-projection bias, Llama with biases, and
GPT-2 (fused Conv1D projections, biases). Weights are redrawn with a spread well above Hugging
Face's init so that switching one head off moves the logits far above float noise.
"""
from __future__ import annotations

import functools

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from synapse_core.model.loading import ModelHandle, prepare

WORDS = (
    "the a of to in is was and on at city river tower capital France Paris London Rome Berlin Mary John "
    "gave went store drink book cat dog sat ran old new big small red blue green one two three four five "
    "he she it they said that this with for from by an as up down over under home king queen"
).split()
FAMILIES = ("llama", "llama_bias", "gpt2")
PROMPT = "the capital of France is the city of"
OTHER = "the old tower in London was a small"  # same length as PROMPT (8 tokens)
SHORT = "the river in Rome"


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    vocab = {w: i for i, w in enumerate(["[UNK]", "[EOS]", *WORDS])}
    assert len(vocab) <= 64, len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


def _config(family: str, n_layers: int):
    common = dict(vocab_size=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=n_layers, n_head=4, n_positions=64, **common)
    return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=64, attention_bias=family == "llama_bias",
                          **common)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm = p.dim() == 1 and any(s in name for s in ("norm", "ln_")) and name.endswith("weight")
            p.copy_(1.0 + 0.1 * noise if is_norm else (0.1 if p.dim() == 1 else 0.3) * noise)


@functools.lru_cache(maxsize=None)
def tiny_handle(family: str = "llama", seed: int = 0, n_layers: int = 2) -> ModelHandle:
    """A prepared tiny model; cached, so treat it as read-only (restore anything you change)."""
    config = _config(family, n_layers)
    cls = tf.GPT2LMHeadModel if family == "gpt2" else tf.LlamaForCausalLM
    model = cls(config)
    _randomize(model, seed)
    return prepare(model, tiny_tokenizer(), name=f"tiny-{family}" + (f"-{n_layers}" if n_layers != 2 else ""))


def ids_of(handle: ModelHandle, text: str) -> torch.Tensor:
    return handle.tokenizer(text, return_tensors="pt").input_ids
