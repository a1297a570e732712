"""Tiny random-init models, one per family in FAMILIES, and a tiny in-memory tokenizer.

Every model has 2 layers and 4 query heads of d_head 8 (d_model 32), with 2 key/value heads where
the family supports grouped-query attention, and a 64-token vocabulary. Weights are redrawn from a
seeded generator with a larger spread than Hugging Face's init (std 0.02), so that attention is
far from uniform and switching one head off moves the logits well above float noise. Biases are
non-zero, so a test that forgets a bias fails. Families with sliding-window attention get a window
of 4 tokens, shorter than the test prompts, so the windowed masks are exercised too.

Nothing here touches a file or the network.
"""
from __future__ import annotations

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from synapse_core.arch.adapters import FAMILIES
from synapse_core.model.loading import ModelHandle, prepare

VOCAB = 64
D_MODEL = 32
N_LAYERS = 2
N_HEADS = 4
D_HEAD = D_MODEL // N_HEADS
WINDOW = 4  # sliding window, shorter than the test sequences

_NO_SPECIAL = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)  # generation never stops early
_COMMON = dict(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=2 * D_MODEL, num_hidden_layers=N_LAYERS,
               num_attention_heads=N_HEADS, max_position_embeddings=64, **_NO_SPECIAL)
_GQA = dict(_COMMON, num_key_value_heads=2)
_LAYER_TYPES = ["sliding_attention", "full_attention"]


def _configs() -> dict:
    return {
        "llama": tf.LlamaConfig(**_GQA, attention_bias=True),
        "qwen2": tf.Qwen2Config(**_GQA, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0,
                                layer_types=_LAYER_TYPES),
        "mistral": tf.MistralConfig(**_GQA, sliding_window=WINDOW),
        "gemma": tf.GemmaConfig(**_GQA, head_dim=D_HEAD),
        "gemma2": tf.Gemma2Config(**_GQA, head_dim=D_HEAD, query_pre_attn_scalar=D_HEAD, sliding_window=WINDOW,
                                  layer_types=_LAYER_TYPES),
        "gemma3_text": tf.Gemma3TextConfig(**_GQA, head_dim=D_HEAD, query_pre_attn_scalar=D_HEAD,
                                           sliding_window=WINDOW, layer_types=_LAYER_TYPES),
        "phi3": tf.Phi3Config(**_GQA),
        "gpt2": tf.GPT2Config(vocab_size=VOCAB, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=64,
                              **_NO_SPECIAL),
        "gpt_neox": tf.GPTNeoXConfig(**_COMMON),
        "opt": tf.OPTConfig(vocab_size=VOCAB, hidden_size=D_MODEL, ffn_dim=2 * D_MODEL, num_hidden_layers=N_LAYERS,
                            num_attention_heads=N_HEADS, max_position_embeddings=64, word_embed_proj_dim=D_MODEL,
                            **_NO_SPECIAL),
    }


FAMILY_NAMES = tuple(FAMILIES)
GQA_FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3_text", "phi3")


def config_for(family: str):
    return _configs()[family]


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter: norms' scales near 1, everything else N(0, 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
            if p.dim() == 1 and any(s in name for s in ("norm", "ln_", "layernorm")) and name.endswith("weight"):
                # gemma-style RMSNorm scales by (1 + weight): near 0 is as harmless as near 1
                p.copy_(1.0 + 0.1 * noise if "gemma" not in model.config.model_type else 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def make_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32, config=None) -> torch.nn.Module:
    """A fresh, unprepared, randomly initialized causal LM of the family (eval mode)."""
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config if config is not None else config_for(family))
    randomize(model, seed)
    return model.to(dtype).eval()


WORDS = (
    "the a an cat dog bird fish sat ran flew swam on in under over mat tree sea sky red blue green big small "
    "is was and or not very quick slow happy sad one two three four five six seven eight nine ten hello world "
    "yes no up down left right old new hot cold day night sun moon star rain"
).split()


def make_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A word-level tokenizer with exactly VOCAB entries: [UNK], [PAD] and 62 words; no eos token."""
    words = ["[UNK]", "[PAD]"] + WORDS
    assert len(words) == VOCAB, len(words)
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def make_handle(family: str, seed: int = 0, dtype: torch.dtype = torch.float32, model=None) -> ModelHandle:
    model = model if model is not None else make_model(family, seed, dtype)
    return prepare(model, make_tokenizer(), name=f"tiny-{family}")


def sample_ids(batch: int = 2, pos: int = 9, seed: int = 1) -> torch.Tensor:
    """Token ids (batch, pos); pos is longer than WINDOW."""
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=FAMILY_NAMES)
def family(request) -> str:
    return request.param


@pytest.fixture
def handle(family) -> ModelHandle:
    """A fresh prepared tiny model of each family."""
    return make_handle(family)


@pytest.fixture
def llama() -> ModelHandle:
    return make_handle("llama")


@pytest.fixture
def gpt2() -> ModelHandle:
    return make_handle("gpt2")


@pytest.fixture
def tokenizer() -> tf.PreTrainedTokenizerFast:
    return make_tokenizer()


class Tiny:
    """The factory, for tests (test modules cannot import conftest: tests/ has one too)."""

    VOCAB, D_MODEL, N_LAYERS, N_HEADS, D_HEAD, WINDOW = VOCAB, D_MODEL, N_LAYERS, N_HEADS, D_HEAD, WINDOW
    FAMILY_NAMES, GQA_FAMILIES = FAMILY_NAMES, GQA_FAMILIES
    config_for = staticmethod(config_for)
    make_model = staticmethod(make_model)
    make_handle = staticmethod(make_handle)
    make_tokenizer = staticmethod(make_tokenizer)
    sample_ids = staticmethod(sample_ids)


@pytest.fixture
def tiny() -> type[Tiny]:
    return Tiny


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run faster on one thread than split over cores (and leave the other core free)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
