"""Harvesting activations: packed contexts through the model, the chosen sites written to disk.

Activations stream batch by batch into float16 `.npy` memory maps (one per site, shape
(n_ctx, pos, d_model)) beside the contexts' token ids (n_ctx, pos): the corpus is never in memory
whole. The forward pass stops after the last layer any site needs (a private exception raised
from the last site's hook), so harvesting layer 5 costs 6 layers, not 30. A harvest that is
interrupted resumes where it stopped: `meta.json` counts the contexts written.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..common.errors import BadInput, StoreError
from ..common.files import atomic_write_json
from ..hooks import dispatch
from ..model.mapper import Mapper, local_mapper

# execution order of the sites inside one layer; mlp.in is the MLP's input (after its norm)
SITE_ORDER = ("attn.out", "mlp.in", "mlp.out", "resid.post")
# TransformerLens names (SAELens's hook_name) of each site
TL_NAMES = {
    "resid.post": "blocks.{}.hook_resid_post",
    "attn.out": "blocks.{}.hook_attn_out",
    "mlp.out": "blocks.{}.hook_mlp_out",
    "mlp.in": "blocks.{}.ln2.hook_normalized",
}
ProgressFn = Callable[[int, int], None]  # (contexts done, contexts wanted)


class _StopForward(Exception):
    """Raised from the last hook needed: the layers after it are never run."""


@dataclass(frozen=True, order=True)
class Site:
    """One place in the model whose activations an SAE reads or writes."""

    layer: int
    site: str  # one of SITE_ORDER

    @property
    def name(self) -> str:  # "layers.15.resid.post"
        return f"layers.{self.layer}.{self.site}"

    @property
    def hook_name(self) -> str:  # "blocks.15.hook_resid_post"
        return TL_NAMES[self.site].format(self.layer)

    @property
    def order(self) -> tuple[int, int]:
        return self.layer, SITE_ORDER.index(self.site)


def parse_site(name: str, n_layers: int | None = None) -> Site:
    """'layers.15.resid.post' (or a TransformerLens hook name) -> Site, checked against the model."""
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if m and m.group(2) in SITE_ORDER:
        site = Site(int(m.group(1)), m.group(2))
    else:
        site = next((Site(int(t.group(1)), s) for s, pat in TL_NAMES.items()
                     if (t := re.fullmatch(re.escape(pat).replace(r"\{\}", r"(\d+)"), name))), None)
        if site is None:
            raise BadInput(f"unknown site {name!r}: use layers.L.SITE with SITE one of {', '.join(SITE_ORDER)}")
    if n_layers is not None and not 0 <= site.layer < n_layers:
        raise BadInput(f"site {name!r}: layer {site.layer} does not exist, the model has layers 0-{n_layers - 1}")
    return site


def _check_hookable(site: Site) -> None:
    if site.site not in dispatch.SITES:
        raise BadInput(f"site {site.name!r} cannot be hooked: the hooks know {', '.join(dispatch.SITES)}")


def capture(handle, ids: torch.Tensor, sites: Sequence[Site]) -> dict[Site, torch.Tensor]:
    """Activations of `sites` for a batch of token ids (batch, pos); each (batch, pos, d).

    The forward pass stops after the last site. No gradients are kept.
    """
    for s in sites:
        parse_site(s.name, handle.arch.n_layers)
        _check_hookable(s)
    last = max(sites, key=lambda s: s.order)
    got: dict[Site, torch.Tensor] = {}

    def grab(site: Site):
        def fn(x: torch.Tensor):
            got[site] = x.detach()
            if site == last:
                raise _StopForward
            return None
        return fn

    fns = {(s.layer, s.site): [grab(s)] for s in sites}
    with torch.no_grad(), dispatch.hooks(handle.model, handle.arch, fns):
        try:
            handle.model(ids.to(handle.device), use_cache=False)
        except _StopForward:
            pass
    return got


class ActivationStore:
    """A harvest on disk: tokens.npy (n_ctx, pos) int32 and one (n_ctx, pos, d) float16 map per site."""

    def __init__(self, folder: Path, limit: int | None = None):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"no readable harvest at {self.folder}: {exc}") from exc
        self.n_done = int(self.meta["done"]) if limit is None else min(limit, int(self.meta["done"]))

    @property
    def sites(self) -> list[str]:
        return list(self.meta["sites"])

    def tokens(self) -> np.ndarray:
        """Token ids of the harvested contexts (n_ctx, pos)."""
        return np.load(self.folder / "tokens.npy", mmap_mode="r")[: self.n_done]

    def acts(self, site: str) -> np.ndarray:
        """Activations (n_ctx, pos, d), float16, memory-mapped."""
        if site not in self.meta["sites"]:
            raise StoreError(f"the harvest at {self.folder} has no site {site!r}; it has {', '.join(self.sites)}")
        return np.load(self.folder / f"{site}.npy", mmap_mode="r")[: self.n_done]


def capture_shard(handle, cases, progress=None, *, sites: tuple[Site, ...]) -> list:
    """A shard function (model.mapper) over batches of contexts: each case is token ids (batch, pos)
    int32; its result is {site name: activations (batch, pos, d) float16}, as the store keeps them."""
    out = []
    for done, ids in enumerate(cases):
        got = capture(handle, torch.from_numpy(np.asarray(ids)).long(), sites)
        out.append({s.name: got[s].float().clamp(-65000, 65000).cpu().numpy().astype(np.float16) for s in sites})
        if progress:
            progress(done + 1, len(cases), f"batch {done + 1}/{len(cases)}")
    return out


def harvest(handle, sites: Sequence[str], contexts: Iterable[np.ndarray], n_contexts: int, folder: Path,
            ctx_len: int, batch_size: int = 8, progress: ProgressFn | None = None,
            should_stop: Callable[[], bool] | None = None, mapper: Mapper | None = None) -> ActivationStore:
    """Run `n_contexts` packed contexts (each int32 (ctx_len,)) through the model in batches and
    write the activations of `sites` (names such as 'layers.15.resid.post') under `folder`.

    Resumes a partial harvest of the same sites and shape in `folder` (the first contexts are
    skipped, so `contexts` must yield the same sequence again); a harvest made for more contexts
    serves a request for fewer (its first n_contexts). Returns the store.

    mapper: where the batches run (model.mapper): here one at a time, or `cases_per_call` batches at
    once on the job engine's Ray actors, written in order as they come back. The batches are the
    same either way, so the activations are.
    """
    parsed = [parse_site(s, handle.arch.n_layers) for s in sites]
    for s in parsed:
        _check_hookable(s)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = handle.arch.d_model
    meta = {"sites": [s.name for s in parsed], "n_contexts": n_contexts, "ctx_len": ctx_len,
            "d_model": d, "dtype": "float16", "done": 0}
    meta_path = folder / "meta.json"
    want = n_contexts
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        same = all(old[k] == meta[k] for k in ("sites", "ctx_len", "d_model", "dtype"))
        if not same or old["n_contexts"] < n_contexts:
            raise StoreError(f"{folder} holds a different harvest ({old['sites']}, {old['n_contexts']} contexts of "
                             f"{old['ctx_len']} tokens); choose another folder")
        meta.update(n_contexts=old["n_contexts"], done=old["done"])
        mode = "r+"
    else:
        mode = "w+"
    cap = meta["n_contexts"]
    tok_map = np.lib.format.open_memmap(folder / "tokens.npy", mode=mode, dtype=np.int32, shape=(cap, ctx_len))
    maps = {s: np.lib.format.open_memmap(folder / f"{s.name}.npy", mode=mode, dtype=np.float16,
                                         shape=(cap, ctx_len, d)) for s in parsed}
    if mode == "w+":
        atomic_write_json(meta_path, meta)
    done, it = meta["done"], iter(contexts)
    n_contexts = want
    for _ in range(done if done < n_contexts else 0):
        next(it)
    each = mapper or local_mapper(handle)
    while done < n_contexts:
        if should_stop is not None and should_stop():
            break
        group, wanted = [], done
        while len(group) < max(1, each.cases_per_call) and wanted < n_contexts:
            take = min(batch_size, n_contexts - wanted)
            batch = [b for b in (next(it, None) for _ in range(take)) if b is not None]
            if batch:
                group.append(np.stack(batch).astype(np.int32))  # (batch, pos)
                wanted += len(batch)
            if len(batch) < take:
                break  # the corpus ran out: what it gave is written, the next round says so
        if not group:
            raise BadInput(f"the corpus ran out after {done} contexts; asked for {n_contexts}")
        for ids, got in zip(group, each(capture_shard, tuple(group), {"sites": tuple(parsed)})):
            for s in parsed:
                maps[s][done:done + len(ids)] = got[s.name]
            tok_map[done:done + len(ids)] = ids
            done += len(ids)
        for m in (*maps.values(), tok_map):
            m.flush()
        meta["done"] = done
        atomic_write_json(meta_path, meta)
        if progress is not None:
            progress(done, n_contexts)
    return ActivationStore(folder, limit=want)
