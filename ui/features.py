"""The Features page's builders: the SAE list and quality cards, the feature table, a feature's
top contexts shaded by activation, its histogram and token tables, and the label editor.

The two st.cache_data readers sit here rather than in core.py because they read only the stored
statistics files (keyed by folder and modification time), never the model or session state.
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import streamlit as st

from synapse_core.common import settings
from synapse_core.features import browse, catalog, labels
from synapse_core.features.stats import N_BINS, FeatureStats

SAE_PICK = "features_sae"
QUERY = "features_query"
SEARCH_BY = "features_search_by"
SORT = "features_sort"
FEATURE_PICK = "features_pick"
LABEL_TEXT = "features_label_text"
LABEL_SAVE = "features_label_save"
QUALITY = (("l0", "L0", "{:.1f}"), ("dead_frac", "dead", "{:.1%}"), ("dense_frac", "dense", "{:.1%}"),
           ("fve", "FVE", "{:.3f}"), ("fve_trimmed", "FVE (no massive dims)", "{:.3f}"),
           ("loss_recovered", "loss recovered", "{:.3f}"), ("ce_increase", "CE increase (nats)", "{:.3f}"))


def saes() -> list[catalog.SAEInfo]:
    return catalog.list_saes()


def quality_cards(info: catalog.SAEInfo) -> list[dict]:
    """One st.metric's arguments per quality figure the SAE has."""
    return [{"label": label, "value": fmt.format(info.quality[k])} for k, label, fmt in QUALITY
            if isinstance(info.quality.get(k), (int, float))]


def _stamp(path: Path) -> float:
    return max((p.stat().st_mtime for p in path.iterdir()), default=0.0)


@st.cache_data(show_spinner=False, max_entries=32)
def _rows(sae: str, stamp: float, labels_stamp: float, query: str, by: str, sort: str, _decode) -> pd.DataFrame:
    rows = browse.find(sae, query, by, sort, decode=_decode)
    return pd.DataFrame([{"feature": r.feature, "label": r.label, "density": r.density,
                          "max activation": r.max_activation} for r in rows],
                        columns=["feature", "label", "density", "max activation"])


def _labels_stamp(sae: str) -> float:
    path = settings.subdir("feature_labels") / f"{sae}.json"
    return path.stat().st_mtime if path.exists() else 0.0


def feature_table(info: catalog.SAEInfo, query: str, by: str, sort: str, decode) -> pd.DataFrame:
    return _rows(info.name, _stamp(info.path), _labels_stamp(info.name), query, by, sort, decode)


@st.cache_data(show_spinner=False, max_entries=64)
def _feature(name: str, stamp: float, labels_stamp: float) -> catalog.FeatureInfo:
    return catalog.show_feature(name)


@st.cache_data(show_spinner=False, max_entries=8)
def _labels(sae: str, stamp: float, labels_stamp: float, path: str) -> list[str]:
    human = labels.human_labels(sae)
    return [human[i].text if i in human else lab for i, lab in enumerate(FeatureStats(Path(path)).meta["labels"])]


def feature(info: catalog.SAEInfo, index: int) -> catalog.FeatureInfo:
    """One feature as stored (read from the statistics files, never the model)."""
    return _feature(f"{info.name}.{index}", _stamp(info.path), _labels_stamp(info.name))


def shaded_context(token_ids: list[int], index: int, decode, acts: dict[int, float] | None = None,
                   peak: float = 1.0, window: int = 24) -> str:
    """HTML of a context around position `index`: every token a span, the activating one outlined,
    shaded orange by activation (acts: position -> activation; only the top token when unknown)."""
    acts = acts or {}
    lo, hi = max(0, index - window), min(len(token_ids), index + 8)
    spans = []
    for p in range(lo, hi):
        a = acts.get(p, 0.0)
        alpha = min(1.0, max(0.0, a / peak)) if peak > 0 else 0.0
        border = "border:1px solid #c0392b;" if p == index else ""
        text = html.escape(decode([token_ids[p]])).replace("\n", "⏎")
        spans.append(f'<span title="{a:.3f}" style="background:rgba(255,140,0,{alpha:.2f});{border}'
                     f'border-radius:2px;white-space:pre">{text}</span>')
    return "<div style='font-family:monospace;line-height:1.8'>" + "".join(spans) + "</div>"


def histogram_frame(f: catalog.FeatureInfo) -> pd.DataFrame:
    width = f.max_activation / N_BINS if f.max_activation > 0 else 0.0
    return pd.DataFrame({"activation": [round((i + 0.5) * width, 3) for i in range(N_BINS)],
                         "tokens": f.histogram}).set_index("activation")


def token_frame(pairs: list[tuple[int, float]], decode) -> pd.DataFrame:
    return pd.DataFrame([{"token": repr(decode([t])), "id": t, "logit": v} for t, v in pairs],
                        columns=["token", "id", "logit"])


def cooccurring_frame(info: catalog.SAEInfo, f: catalog.FeatureInfo) -> pd.DataFrame:
    names = _labels(info.name, _stamp(info.path), _labels_stamp(info.name), str(info.path))
    rows = [{"feature": n, "label": names[catalog.parse_feature(n)[1]], "jaccard": j} for n, j in f.cooccurring]
    return pd.DataFrame(rows, columns=["feature", "label", "jaccard"])


def save_label(f: catalog.FeatureInfo, text: str, by: str) -> labels.HumanLabel:
    return labels.set_label(f.sae, f.feature, text, by)  # the caches above are keyed by the label file's time


@st.cache_resource(show_spinner=False, max_entries=4)
def _sae(name: str, stamp: float, d_model: int):
    return catalog.load(name, d_model)[1]


@st.cache_data(show_spinner=False, max_entries=32)
def _window_acts(_handle, model_key: str, name: str, stamp: float, windows: tuple, index: int) -> list[list[float]]:
    import torch

    from synapse_core.features.harvest import capture, parse_site

    sae_name, feat = catalog.parse_feature(name)
    info = catalog.find_sae(sae_name)
    sae = _sae(sae_name, stamp, _handle.arch.d_model)
    site = parse_site(info.hook_name, _handle.arch.n_layers)
    x = capture(_handle, torch.tensor(windows), [site])[site]  # (batch, pos, d_model)
    with torch.no_grad():
        z = sae.encode(x.float())[..., feat]  # (batch, pos)
    z[:, 0] = 0  # position 0 is never encoded (see evaluate.py)
    return z.tolist()


def stored_activations(f: catalog.FeatureInfo) -> list[dict[int, float]]:
    """For each top context, the activations the stored index knows in its window (position ->
    activation): its own token, and any other top context of the feature in the same window."""
    known: dict[tuple, dict[int, float]] = {}
    for c in f.top_contexts:
        known.setdefault(tuple(c.token_ids), {})[c.token_index] = c.activation
    return [known[tuple(c.token_ids)] for c in f.top_contexts]


def context_activations(handle, info: catalog.SAEInfo, f: catalog.FeatureInfo) -> list[dict[int, float]]:
    """The feature's activation at every position of each top context (batch, pos), by re-running
    those windows through the model and the SAE: one truncated forward pass."""
    if not f.top_contexts:
        return []
    windows = tuple(tuple(c.token_ids) for c in f.top_contexts)
    rows = _window_acts(handle, handle.fingerprint, f.name, _stamp(info.path), windows, f.feature)
    return [dict(enumerate(row)) for row in rows]


# ---- the Trace page's feature section --------------------------------------------------------

TRACE_SAES = "trace_feature_saes"


@st.cache_data(show_spinner=False, max_entries=16)
def _activity(_handle, model_key: str, ids: tuple, saes: tuple, stamps: tuple):
    from synapse_core.features.activity import feature_activity

    return feature_activity(_handle, list(ids), list(saes))


def trace_section(handle, ids: tuple[int, ...]) -> None:
    """Top features at each token of the traced text for the chosen SAEs: a heatmap and a list."""
    import altair as alt

    known = {s.name: s for s in saes() if s.d_in == handle.arch.d_model and not s.hook_name.endswith("normalized")}
    if not known:
        st.caption("No SAE for this model: the Features page says how to get one.")
        return
    chosen = st.multiselect("SAEs", list(known), default=[n for n in known if known[n].has_stats][:1],
                            key=TRACE_SAES)
    if not chosen:
        return
    act = _activity(handle, handle.fingerprint, tuple(ids), tuple(chosen),
                    tuple(_stamp(known[n].path) for n in chosen))
    decode = handle.tokenizer.decode
    cells = [{"position": f"{r.position} {decode([r.token])!r}", "feature": f"{r.sae}.{f}", "activation": a}
             for r in act.per_token for f, a in r.features]
    if not cells:
        st.caption("No feature of these SAEs fires on this text.")
        return
    frame = pd.DataFrame(cells)
    strongest = frame.groupby("feature")["activation"].max().nlargest(20).index
    shown = frame[frame["feature"].isin(strongest)]
    chart = alt.Chart(shown).mark_rect().encode(
        x=alt.X("position:N", sort=None, title="token"), y=alt.Y("feature:N", title=None),
        color=alt.Color("activation:Q", scale=alt.Scale(scheme="oranges")),
        tooltip=["position", "feature", alt.Tooltip("activation:Q", format=".3f")])
    st.altair_chart(chart, key="trace_features_chart")
    st.dataframe(pd.DataFrame([{"position": r.position, "token": decode([r.token]), "sae": r.sae,
                                "features": ", ".join(f"{f} ({a:.2f}) {act.labels.get(f'{r.sae}.{f}', '')}"
                                                      for f, a in r.features)} for r in act.per_token]),
                 key="trace_features_table", hide_index=True)
    st.caption("The strongest features of each SAE at every token (position 0, the separator, left out), from one "
               "forward pass over the text; the heatmap shows the 20 strongest. Names open on the Features page.")


# ---- the Ablate page's feature sites ---------------------------------------------------------

FEATURE_OP_LABELS = {"zero": "zero the feature", "clamp": "clamp it to a value", "steer": "steer along its direction"}


def feature_interventions(text: str, op: str, value: float | None, positions_text: str):
    """Interventions on the features named in `text` (comma-separated); BadInput naming a bad one."""
    from synapse_core.common.errors import BadInput
    from synapse_core.features.intervene import feature_intervention
    from synapse_core.interventions.ops import parse_positions

    names = [n for n in text.replace(" ", ",").split(",") if n]
    if not names:
        raise BadInput("no feature given: write a feature's name, e.g. layers.15.resid.post.sae.1234")
    positions = parse_positions(positions_text)
    return tuple(feature_intervention(n, op, value, positions) for n in names)


def intervenable_saes(handle) -> list[str]:
    """SAEs of this model whose site the model reads back (residual stream, attention or MLP output)."""
    from synapse_core.features.intervene import COMPONENT

    return [s.name for s in saes() if s.d_in == handle.arch.d_model and s.site in COMPONENT]


def sweep_widgets(handle, col) -> tuple[str | None, str, int]:
    """The feature sweep's inputs in `col`: the SAE, the feature list text and how many of the most
    active features to take when the list is empty."""
    sae_col, list_col, top_col = col.columns([2, 2, 1])
    sae = sae_col.selectbox("SAE", intervenable_saes(handle), key="ablate_sweep_sae")
    text = list_col.text_input("Features (empty: the most active on the prompt)", key="ablate_sweep_features")
    top = top_col.number_input("Most active", min_value=1, max_value=500, value=20, key="ablate_sweep_top")
    return sae, text, int(top)


# ---- graphs of features ----------------------------------------------------------------------

GRAPH_SIZE = "features_graph_size"
GRAPH_KIND = "features_graph_kind"
GRAPH_COSINE = "features_graph_cosine"
SUPERNODE_COLORS = ("#e67e22", "#8e44ad", "#16a085", "#c0392b", "#2980b9", "#7f8c8d")


def graph_drawing(g, names: dict[int, str], tree_only: bool):
    """streamlit-agraph nodes, edges and config: node size by nothing but presence, edge width by
    Jaccard; members of one supernode share a colour."""
    from streamlit_agraph import Config, Edge, Node

    color = {}
    for i, group in enumerate(g.supernodes):
        for f in group:
            color[f] = SUPERNODE_COLORS[i % len(SUPERNODE_COLORS)]
    nodes = [Node(id=str(f), label=str(f), title=names.get(f, ""), size=12, color=color.get(f, "#95a5a6"))
             for f in g.nodes]
    strongest = max((w for *_, w in g.edges), default=1.0) or 1.0
    edges = [Edge(str(a), str(b), width=0.5 + 4 * w / strongest, title=f"Jaccard {w:.3f}", color="#34495e")
             for a, b, w in (g.tree if tree_only else g.edges)]
    return nodes, edges, Config(height=480, directed=False, physics=True, hierarchical=False, groups={})


def feature_graph(info: catalog.SAEInfo, features: list[int], threshold: float):
    from synapse_core.features.cograph import feature_graph as build

    return build(info.name, features, threshold)


# ---- LLM labels (only when an endpoint is configured) ----------------------------------------


def llm_config():
    from synapse_core.features.llmlabel import config_from_env

    return config_from_env()


def save_llm_label(f: catalog.FeatureInfo, decode, cfg) -> labels.HumanLabel:
    """Ask the configured endpoint for a label and store it with `llm:<model>` as its author."""
    from synapse_core.features.llmlabel import llm_label

    return labels.set_label(f.sae, f.feature, llm_label(f, decode, cfg), f"llm:{cfg.model}")
