"""The Top-K sparse autoencoder (Gao et al. 2024) and transcoder, in SAELens's on-disk format.

    z     = TopK(relu((x - b_dec) @ W_enc + b_enc))     # (batch, d_sae), k nonzero per row
    x_hat = z @ W_dec + b_dec                           # (batch, d_out)

A transcoder is the same module reading one site (d_in) and writing another (d_out); it does not
subtract b_dec from its input (apply_b_dec_to_input False). A folder holds `cfg.json` and
`sae_weights.safetensors` (W_enc (d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_out), b_dec (d_out)),
any input scaling already folded in, so SAELens loads it and any reader needs only the formula.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from ..common.errors import BadInput, StoreError
from ..common.files import atomic_write_json

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class SAEConfig:
    """The fields of SAELens's cfg.json that Synapse reads and writes."""

    d_in: int  # width of the site read
    d_sae: int  # number of latents
    k: int  # latents kept per token
    hook_name: str  # TransformerLens name of the site read, e.g. blocks.15.hook_resid_post
    d_out: int | None = None  # width of the site written; None: an SAE (= d_in)
    hook_name_out: str | None = None  # transcoders: the site reconstructed
    architecture: str = "topk"
    apply_b_dec_to_input: bool = True
    dtype: str = "float32"
    normalize_activations: str = "none"  # scaling is folded into the weights before saving
    model_name: str = "SmolLM2-135M-Instruct"
    hook_layer: int = -1
    context_size: int = 128
    prepend_bos: bool = True

    @property
    def out_dim(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def is_transcoder(self) -> bool:
        return self.hook_name_out is not None

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["activation_fn_kwargs"] = {"k": self.k}  # where older SAELens versions look for k
        out["sae_lens_training_version"] = None
        return out

    @classmethod
    def from_json(cls, raw: dict, where: str = "cfg.json") -> "SAEConfig":
        raw = dict(raw)
        if "k" not in raw and isinstance(raw.get("activation_fn_kwargs"), dict):
            raw["k"] = raw["activation_fn_kwargs"].get("k")
        arch = raw.get("architecture", "topk")
        if arch != "topk" and raw.get("activation_fn_str") != "topk":
            raise StoreError(f"{where}: architecture {arch!r} is not supported; Synapse reads Top-K SAEs")
        raw["architecture"] = "topk"
        for key in ("d_in", "d_sae", "k", "hook_name"):
            if raw.get(key) is None:
                raise StoreError(f"{where} has no {key!r}")
        if raw.get("normalize_activations", "none") not in ("none", None):
            raise StoreError(f"{where}: normalize_activations {raw['normalize_activations']!r} is not supported; "
                             "fold the scaling into the weights (normalize_activations 'none')")
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in raw.items() if k in known and v is not None})
        if not 0 < cfg.k <= cfg.d_sae:
            raise StoreError(f"{where}: k = {cfg.k} must be between 1 and d_sae = {cfg.d_sae}")
        return cfg


class TopKSAE(nn.Module):
    """Top-K SAE or transcoder. Weights in SAELens's layout; shapes as in the module docstring."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dt = DTYPES[cfg.dtype]
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.out_dim, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(cfg.out_dim, dtype=dt))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """relu((x - b_dec) @ W_enc + b_enc): (..., d_in) -> (..., d_sae)."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return torch.relu(x @ self.W_enc + self.b_enc)

    def encode_topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The k largest latents: values and indices, each (..., k)."""
        return self.pre_acts(x).topk(self.cfg.k, dim=-1, sorted=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense latent activations (..., d_sae) with at most k nonzero per row."""
        vals, idx = self.encode_topk(x)
        return torch.zeros(*x.shape[:-1], self.cfg.d_sae, dtype=vals.dtype, device=vals.device).scatter_(-1, idx, vals)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z @ W_dec + b_dec: (..., d_sae) -> (..., d_out)."""
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Decode from top-k values and indices (..., k) without the dense latent vector."""
        rows = self.W_dec[idx]  # (..., k, d_out)
        return (vals.unsqueeze(-1) * rows).sum(-2) + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction (..., d_out) of x (..., d_in)."""
        return self.decode_sparse(*self.encode_topk(x))

    def check_feature(self, index: int) -> None:
        if not 0 <= int(index) < self.cfg.d_sae:
            raise BadInput(f"feature {index} does not exist: this SAE has features 0-{self.cfg.d_sae - 1}")

    def check_input(self, d: int, site: str = "the site") -> None:
        if d != self.cfg.d_in:
            raise BadInput(f"the SAE reads vectors of width d_in = {self.cfg.d_in}, but {site} has width {d}")

    def to_dtype(self, dtype: str) -> "TopKSAE":
        """A copy in another precision ('float32', 'float16', 'bfloat16')."""
        if dtype not in DTYPES:
            raise BadInput(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        out = TopKSAE(replace(self.cfg, dtype=dtype))
        out.load_state_dict({k: v.detach().to(DTYPES[dtype]) for k, v in self.state_dict().items()})
        return out

    def save(self, folder: Path) -> Path:
        """Write cfg.json and sae_weights.safetensors into `folder` (created)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / WEIGHTS_FILE)
        atomic_write_json(folder / CFG_FILE, self.cfg.to_json())
        return folder


def load_sae(folder: Path, device: str | torch.device = "cpu", dtype: str | None = None) -> TopKSAE:
    """Load a SAELens-format Top-K folder (trained here or not), checking every tensor's shape.

    Raises StoreError naming the file and the bad value when a file is missing or corrupt.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise StoreError(f"{folder} is not an SAE folder: it has no {CFG_FILE}")
    try:
        cfg = SAEConfig.from_json(json.loads(cfg_path.read_text()), str(cfg_path))
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{cfg_path} is not valid: {exc}") from exc
    if not w_path.is_file():
        raise StoreError(f"{folder} has no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise StoreError(f"{w_path} is corrupt: {exc}") from exc
    want = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.out_dim),
            "b_dec": (cfg.out_dim,)}
    for name, shape in want.items():
        if name not in tensors:
            raise StoreError(f"{w_path} lacks the tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise StoreError(f"{w_path}: {name} has shape {tuple(tensors[name].shape)}, cfg.json implies {shape}")
    file_dtype = next(k for k, v in DTYPES.items() if v == tensors["W_enc"].dtype) if tensors["W_enc"].dtype in DTYPES.values() else None
    if file_dtype is None:
        raise StoreError(f"{w_path}: W_enc has unsupported dtype {tensors['W_enc'].dtype}")
    sae = TopKSAE(replace(cfg, dtype=file_dtype))
    sae.load_state_dict({k: tensors[k] for k in want})
    if dtype is not None and dtype != file_dtype:
        sae = sae.to_dtype(dtype)
    return sae.to(device).eval()
