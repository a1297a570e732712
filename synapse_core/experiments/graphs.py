"""Attribution graphs as stored experiments: hashed, kept on disk, listed in History and reopened by
`?experiment=<hash>`. Supernode names are stored with the graph: saving an edited graph rewrites
its entry under the same hash."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from ..arch.spec import HeadMask, normalize_masks
from ..common.errors import BadInput, StoreError
from ..common.hashing import Hashed, shorten
from ..features.catalog import find_sae
from ..features.sae import WEIGHTS_FILE, load_sae
from ..graphs.build import build_graph
from ..graphs.claims import CLAIM_NODES
from ..graphs.frozen import check_transcoder
from ..graphs.graph import AttributionGraph
from ..graphs.prune import check_thresholds
from ..model.loading import ModelHandle, file_fingerprint
from .records import Experiment, StoredExperiment, load_experiment
from .store import ResultStore


@dataclass(frozen=True)
class GraphConfig(Hashed):
    """Everything a graph depends on; its content hash is the store key and the experiment id."""

    model: str  # model name
    fingerprint: str  # weights fingerprint
    dtype: str
    prompt: str
    target: str  # as typed
    contrast: str | None  # as typed; None: the graph explains logit(target)
    masks: tuple[HeadMask, ...]  # heads masked in every run
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    claims: int = CLAIM_NODES  # nodes checked by real ablation
    transcoders: tuple[tuple[str, str], ...] = ()  # (catalog name or folder, weights fingerprint) per replaced MLP
    kind: str = "graph"
    metric: str = "logit"  # what the History list calls this kind's measure

    @property
    def prompts(self) -> tuple[str, ...]:
        return (self.prompt,)

    @property
    def title(self) -> str:
        prompt = shorten(self.prompt)
        versus = f" vs {self.contrast!r}" if self.contrast else ""
        return f"graph \u00b7 {prompt!r} \u2192 {self.target!r}{versus}"


def _transcoder_folder(name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_dir() else find_sae(name).path


def load_transcoders(handle: ModelHandle, names) -> dict:
    """layer -> TopKSAE for each transcoder named (a catalog name or an SAELens-format folder), each checked
    against its layer's MLP; BadInput for an unknown name, a mismatched site or two for one layer."""
    out = {}
    for name in names:
        tc = load_sae(_transcoder_folder(name), dtype="float32")
        match = re.match(r"blocks\.(\d+)\.", tc.cfg.hook_name)
        if not match:
            raise BadInput(f"transcoder {name!r} reads {tc.cfg.hook_name}, which names no layer")
        layer = int(match.group(1))
        if layer in out:
            raise BadInput(f"two transcoders for layer {layer}: give one a layer")
        check_transcoder(handle, layer, tc)
        out[layer] = tc
    return out


def graph_config(handle: ModelHandle, prompt: str, target: str, contrast: str | None = None, masks=(),
                 node_threshold: float = 0.8, edge_threshold: float = 0.98, claims: int = CLAIM_NODES,
                 transcoders=()) -> GraphConfig:
    check_thresholds(node_threshold, edge_threshold)
    if claims < 0:
        raise BadInput(f"claims {claims}: the number of nodes checked by ablation must be 0 or more")
    load_transcoders(handle, transcoders)  # refuse a bad one before anything runs
    named = tuple((name, file_fingerprint([_transcoder_folder(name) / WEIGHTS_FILE])) for name in transcoders)
    return GraphConfig(model=handle.name, fingerprint=handle.fingerprint, dtype=str(handle.dtype), prompt=prompt,
                       target=target, contrast=contrast or None, masks=normalize_masks(masks, handle.arch),
                       node_threshold=float(node_threshold), edge_threshold=float(edge_threshold), claims=int(claims),
                       transcoders=named)


def run_graph(handle: ModelHandle, config: GraphConfig, store: ResultStore | None = None) -> Experiment:
    """Answer from the store when this exact graph was built before, else build and store it."""
    if config.fingerprint != handle.fingerprint or config.dtype != str(handle.dtype):
        raise BadInput(f"graph {config.hash} was made with {config.model} (weights {config.fingerprint}, "
                       f"{config.dtype}); the loaded model is {handle.name} ({handle.fingerprint}, {handle.dtype})")
    store = store or ResultStore()
    entry, from_cache, notes = store.get_or_compute(
        config.kind, config,
        lambda: StoredExperiment(config, build_graph(
            handle, config.prompt, config.target, config.contrast, config.masks, config.node_threshold,
            config.edge_threshold, config.claims, load_transcoders(handle, [n for n, _ in config.transcoders]))),
        summary={"kind": config.kind, "model": config.model, "title": config.title})
    return _as_graph(Experiment(entry.result.config, entry.result.result, entry.key, entry.created, from_cache,
                                tuple(notes)) if isinstance(entry.result, StoredExperiment) else entry)


def save_graph(store: ResultStore, exp: Experiment, graph: AttributionGraph) -> Experiment:
    """Store an edited graph (supernodes, thresholds) under its experiment's hash; the config is unchanged."""
    _as_graph(exp)
    entry = store.put(exp.hash, exp.config.kind, StoredExperiment(exp.config, graph),
                      {"kind": exp.config.kind, "model": exp.config.model, "title": exp.config.title})
    return dataclasses.replace(exp, result=graph, created=entry.created, from_cache=False)


def load_graph(store: ResultStore, key: str) -> Experiment | None:
    """The stored graph of a `?experiment=` id; None when absent, StoreError when it is another kind."""
    exp = load_experiment(store, key)
    return None if exp is None else _as_graph(exp)


def _as_graph(exp) -> Experiment:
    if not isinstance(exp, Experiment) or not isinstance(exp.result, AttributionGraph):
        key = getattr(exp, "hash", None) or getattr(exp, "key", "?")
        raise StoreError(f"result {key} is not an attribution graph")
    return exp
