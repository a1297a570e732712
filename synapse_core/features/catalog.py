"""The SAEs Synapse knows, by stable name, and what the browser and the CLI show of one feature.

An SAE is named after the site it reads: `layers.15.resid.post.sae`; one of its features is that
name plus its index: `layers.15.resid.post.sae.1234`. SAEs are found in the shipped folder and in
$SYNAPSE_HOME/features (SAEs trained by a user, or SAELens-format folders copied there).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..common import settings
from ..common.errors import BadInput, StoreError
from .harvest import parse_site
from .labels import human_labels
from .sae import CFG_FILE, SAEConfig, TopKSAE, load_sae
from .stats import N_BINS, STATS_JSON, FeatureStats, TopContext

SHIPPED_DIR = Path(__file__).parent / "shipped"
_FEATURE = re.compile(r"(?P<sae>.+\.sae)\.(?P<index>-?\d+)")


@dataclass(frozen=True)
class SAEInfo:
    name: str  # layers.15.resid.post.sae
    layer: int
    site: str  # resid.post
    path: Path  # the SAELens-format folder
    d_in: int
    d_sae: int
    k: int
    hook_name: str  # blocks.15.hook_resid_post
    quality: dict = field(default_factory=dict)  # evaluate.Quality fields; empty when never evaluated
    has_stats: bool = False
    hook_name_out: str | None = None  # a transcoder: the site it reconstructs (None for an SAE)

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class FeatureInfo:
    name: str  # layers.15.resid.post.sae.1234
    sae: str
    feature: int
    label: str
    density: float  # share of held-out tokens it is active on
    max_activation: float
    mean_activation: float  # over the tokens it is active on
    top_contexts: list[TopContext]  # highest first
    histogram: list[int]  # counts of nonzero activations in N_BINS equal bins from 0 to max_activation
    promoted: list[tuple[int, float]]  # (token id, logit) its decoder direction raises most
    suppressed: list[tuple[int, float]]
    cooccurring: list[tuple[str, float]]  # (feature name, Jaccard index of the token sets)
    auto_label: str = ""  # computed when the SAE was built; `label` is a person's label when one is stored
    label_by: str | None = None  # who gave the person's label
    label_at: str | None = None  # when (UTC)

    def to_json(self) -> dict:
        d = asdict(self)
        d["top_contexts"] = [asdict(c) for c in self.top_contexts]
        return d


def search_dirs() -> list[Path]:
    return [SHIPPED_DIR, settings.subdir("features")]


def _info(folder: Path) -> SAEInfo:
    try:
        cfg = SAEConfig.from_json(json.loads((folder / CFG_FILE).read_text()), str(folder / CFG_FILE))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{folder / CFG_FILE} is not readable: {exc}") from exc
    site = parse_site(cfg.hook_name)
    stats_path = folder / STATS_JSON
    quality = {}
    if stats_path.exists():
        quality = json.loads(stats_path.read_text()).get("quality", {})
    name = folder.name if folder.name.endswith(".sae") else f"{site.name}.sae"
    return SAEInfo(name, site.layer, site.site, folder, cfg.d_in, cfg.d_sae, cfg.k, cfg.hook_name, quality,
                   stats_path.exists(), cfg.hook_name_out)


def list_saes(dirs: list[Path] | None = None) -> list[SAEInfo]:
    """Every SAE folder under the search directories, by layer then name; a name found twice is
    taken from the first directory (the shipped SAEs win)."""
    seen: dict[str, SAEInfo] = {}
    for root in dirs if dirs is not None else search_dirs():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / CFG_FILE).is_file()):
            info = _info(folder)
            seen.setdefault(info.name, info)
    return sorted(seen.values(), key=lambda i: (i.layer, i.name))


def find_sae(name: str, dirs: list[Path] | None = None) -> SAEInfo:
    saes = list_saes(dirs)
    for info in saes:
        if info.name == name:
            return info
    known = ", ".join(i.name for i in saes) or "none (run `make features`)"
    raise BadInput(f"no SAE named {name!r}; known SAEs: {known}")


def parse_feature(name: str) -> tuple[str, int]:
    """'layers.15.resid.post.sae.1234' -> ('layers.15.resid.post.sae', 1234)."""
    m = _FEATURE.fullmatch(name.strip())
    if not m:
        raise BadInput(f"{name!r} is not a feature name: expected an SAE name plus an index, "
                       "e.g. layers.15.resid.post.sae.1234")
    return m.group("sae"), int(m.group("index"))


def load(name: str, d_model: int | None = None, dirs: list[Path] | None = None) -> tuple[SAEInfo, TopKSAE]:
    """The SAE called `name` in float32, checked against the model's width when d_model is given."""
    info = find_sae(name, dirs)
    sae = load_sae(info.path, dtype="float32")
    if d_model is not None:
        sae.check_input(d_model, f"the model's {info.site} at layer {info.layer}")
    return info, sae


def show_feature(name: str, dirs: list[Path] | None = None) -> FeatureInfo:
    """Everything stored about one feature; reads only the stats files, never the model."""
    sae_name, index = parse_feature(name)
    info = find_sae(sae_name, dirs)
    if not 0 <= index < info.d_sae:
        raise BadInput(f"feature {index} does not exist: {sae_name} has features 0-{info.d_sae - 1}")
    if not info.has_stats:
        raise StoreError(f"{sae_name} has no feature statistics ({info.path / STATS_JSON}); "
                         "run `features eval` on it first")
    st = FeatureStats(info.path)
    a = st.arrays
    human = human_labels(sae_name).get(index)
    return FeatureInfo(
        name=f"{sae_name}.{index}", sae=sae_name, feature=index, label=human.text if human else st.label(index),
        density=float(a["density"][index]), max_activation=float(a["max_act"][index]),
        mean_activation=float(a["mean_act"][index]), top_contexts=st.top_contexts(index),
        histogram=[int(c) for c in a["hist"][index][:N_BINS]],
        promoted=[(int(t), float(v)) for t, v in zip(a["promoted_ids"][index], a["promoted_logits"][index])],
        suppressed=[(int(t), float(v)) for t, v in zip(a["suppressed_ids"][index], a["suppressed_logits"][index])],
        cooccurring=[(f"{sae_name}.{int(j)}", float(v)) for j, v in zip(a["cooc_idx"][index], a["cooc_jaccard"][index])
                     if v > 0],
        auto_label=st.label(index), label_by=human.by if human else None, label_at=human.at if human else None,
    )


def search_features(name: str, query: str, dirs: list[Path] | None = None, limit: int = 50) -> list[int]:
    """Indices of features whose label (automatic or a person's) contains `query` (case-insensitive),
    densest first."""
    info = find_sae(name, dirs)
    st = FeatureStats(info.path)
    q = query.lower()
    human = human_labels(info.name)
    hits = [i for i, label in enumerate(st.meta["labels"])
            if q in label.lower() or (i in human and q in human[i].text.lower())]
    density = st.arrays["density"]
    return sorted(hits, key=lambda i: -float(density[i]))[:limit] if len(hits) else []


def densities(name: str, dirs: list[Path] | None = None) -> np.ndarray:
    return FeatureStats(find_sae(name, dirs).path).arrays["density"]
