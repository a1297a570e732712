"""CLI commands `info` (describe the model), `prepare-model` (dequantize a GGUF file once) and
`trace` (generate with every head traced).

    python -m synapse_core prepare-model
    python -m synapse_core trace --prompt "The Eiffel Tower is in the city of" --json
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

from ..common.errors import BadInput
from .common import add_mask_args, add_model_args, emit, load, run_masks


def _info_args(p):
    add_model_args(p)


def _info(args):
    handle = load(args)
    arch = handle.arch
    payload = {
        "model": handle.name,
        "family": arch.family,
        "n_layers": arch.n_layers,
        "n_heads": arch.n_heads,
        "n_kv_heads": arch.n_kv_heads,
        "d_head": arch.d_head,
        "d_model": arch.d_model,
        "device": str(handle.device),
        "dtype": str(handle.dtype).replace("torch.", ""),
        "fingerprint": handle.fingerprint,
        "source": handle.source,
    }
    emit(args, payload, "\n".join(f"{k}: {v}" for k, v in payload.items()))


def _prepare(args):
    """Fill the safetensors cache of a GGUF model, so the first page of the app (and every later
    command) loads in seconds instead of dequantizing first. Progress goes to stderr."""
    from ..model.gguf import converted_cache, gguf_path, is_converted  # no torch: a converted model answers at once

    path = gguf_path(args.model)
    if path is None:
        return emit(args, {"model": args.model, "gguf": None, "converted": False},
                    f"nothing to prepare: {args.model} is not a GGUF model and loads without conversion")
    payload = {"model": args.model or "bundled", "gguf": str(path), "cache": str(converted_cache(path))}
    if is_converted(path):
        return emit(args, {**payload, "converted": False, "seconds": 0.0},
                    f"ready: {path.name} is already converted ({payload['cache']})")
    print(f"converting {path.name} to safetensors, once (about 20 s; up to 2 min on a busy machine) ...",
          file=sys.stderr, flush=True)
    from ..model.loading import load_model

    start = time.perf_counter()
    load_model(args.model, device="cpu", dtype="float32")  # converts, then fills the cache
    seconds = time.perf_counter() - start
    emit(args, {**payload, "converted": True, "seconds": round(seconds, 1)},
         f"converted {path.name} in {seconds:.1f} s ({payload['cache']})")


def _trace_args(p):
    add_model_args(p)
    add_mask_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-attention", action="store_true", help="skip attention capture")
    p.add_argument("--influence", type=int, default=None, metavar="N",
                   help="also attribute generated token N to the source tokens (integrated gradients from the pad "
                        "token's embedding; tens of forward and backward passes)")


def _trace(args):
    from ..analysis.trace import trace
    from ..model.generation import Sampling

    if not args.prompt.strip():
        raise BadInput("the prompt is empty: give --prompt some text")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise BadInput(f"--temperature {args.temperature} must be a number, 0 or more (0 = greedy)")
    handle = load(args)
    masks = run_masks(args, handle)
    result = trace(handle, args.prompt, args.max_new_tokens, masks=masks,
                   sampling=Sampling(args.temperature, args.top_k, args.seed),
                   capture_attention=not args.no_attention)
    payload = result.to_json()
    if args.influence is not None:
        from ..analysis.influence import token_influence

        inf = token_influence(handle, result.prompt_ids, result.generated_ids, args.influence, masks)
        payload["influence"] = {
            "output_index": inf.output_index,
            "output_token": inf.output_token,
            "method": inf.method,
            "baseline": inf.baseline,
            "tokens": list(inf.source_tokens),
            "scores": [round(float(s), 6) for s in inf.scores],
            "log_prob": round(inf.log_prob, 6),
            "baseline_log_prob": round(inf.baseline_log_prob, 6),
            "completeness_error": inf.completeness_error,  # |sum(scores) - (log_prob - baseline_log_prob)| / |that change|
            "gradients": inf.points,
            "passes": inf.passes,
        }
    top = ", ".join(f"{h.layer}.{h.head} ({h.score:.2f})" for h in result.top_heads[:5])
    emit(args, payload, f"{args.prompt}\u2192{result.generated_text!r}\ntop heads: {top}")


COMMANDS: list[tuple[str, str, Callable, Callable]] = [
    ("info", "describe the model", _info_args, _info),
    ("prepare-model", "dequantize a GGUF model once, so later loads take seconds", _info_args, _prepare),
    ("trace", "generate with every head traced", _trace_args, _trace),
]
