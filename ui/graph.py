"""Builders for the Graph page: the run through the result store, the layered drawing, the node, claim and
supernode tables, and the supernode and quarantine callbacks.

No st.cache_* here: a graph is a stored experiment (the result store lives in core.py), and re-pruning at
other thresholds works on the graph's own candidate pool in well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
import streamlit as st
from streamlit_agraph import Config, Edge, Node

from synapse_core.analysis.lens import LensResult, logit_lens
from synapse_core.common.errors import BadInput, SynapseError
from synapse_core.experiments.graphs import load_graph, run_graph, save_graph
from synapse_core.features.catalog import list_saes
from synapse_core.graphs import supernodes as sn
from synapse_core.graphs.graph import AttributionGraph
from ui import core, govtables
from ui import discover as ui_discover
from ui.feature_link import feature_url, graph_feature_name

GRAPH_RUN = "graph_run"  # the GraphRun the page shows
OPENED_LINK = "graph_opened_link"  # the ?experiment= hash already opened
NODE_PICK = "graph_node_pick"  # selectbox: the node whose details are shown (a click on the drawing sets it)
REPORT = "graph_report"  # (st function name, message) of the last supernode or quarantine action
DX, DY = 110, 70  # px between positions (left to right) and between drawn rows (tokens at the bottom)
COLORS = {"token": "#5b8def", "head": "#e07a2f", "mlp": "#3a9d5d", "feature": "#8e5bd6", "error": "#9e9e9e",
          "logit": "#c62828"}
DISAGREE = 2.0  # claimed and measured disagree when their signs differ or one is over DISAGREE x the other


@dataclass(frozen=True)
class GraphRun:
    """A graph as the page shows it, with the logit lens of the same prompt and target."""

    graph: AttributionGraph
    key: str  # the experiment's content hash
    from_cache: bool
    notes: tuple[str, ...]
    lens: LensResult | None = None
    transcoders: tuple[str, ...] = ()  # the transcoders (catalog names or folders) whose features are nodes


def run(handle, config) -> GraphRun:
    exp = run_graph(handle, config, core.experiment_store())
    lens = logit_lens(handle, config.prompt, config.target, config.masks)
    return GraphRun(exp.result, exp.hash, exp.from_cache, tuple(exp.notes), lens,
                    tuple(name for name, _ in config.transcoders))


def reopen(key: str) -> GraphRun:
    """The stored graph of a `?experiment=` link; BadInput when none is stored under `key`."""
    exp = load_graph(core.experiment_store(), key)
    if exp is None:
        raise BadInput(f"no experiment {key} is stored here: it was deleted, or made on another machine")
    return GraphRun(exp.result, exp.hash, True, (), transcoders=tuple(name for name, _ in exp.config.transcoders))


def _save(graph: AttributionGraph) -> None:
    """Store the edited graph under its hash and show it."""
    current: GraphRun = st.session_state[GRAPH_RUN]
    exp = load_graph(core.experiment_store(), current.key)
    if exp is None:
        raise BadInput(f"experiment {current.key} is no longer stored: build the graph again")
    save_graph(core.experiment_store(), exp, graph)
    st.session_state[GRAPH_RUN] = replace(current, graph=graph)


def edit_supernodes(action: str) -> None:
    """Supernode button callback: group | merge | split | rename, from the page's widgets; stored at once."""
    graph = st.session_state[GRAPH_RUN].graph
    get = st.session_state.get
    try:
        if action == "group":
            graph = sn.group(graph, get("graph_sn_nodes") or [], get("graph_sn_name") or "")
        elif action == "merge":
            graph = sn.merge(graph, get("graph_sn_pick") or [], get("graph_sn_name") or "")
        elif action == "split":
            for name in get("graph_sn_pick") or []:
                graph = sn.split(graph, name)
        else:
            picked = get("graph_sn_pick") or []
            if len(picked) != 1:
                raise BadInput(f"rename one supernode at a time; {len(picked)} are picked")
            graph = sn.rename(graph, picked[0], get("graph_sn_name") or "")
        _save(graph)
    except SynapseError as exc:
        st.session_state[REPORT] = ("error", str(exc))
    else:
        key = st.session_state[GRAPH_RUN].key
        st.session_state[REPORT] = ("success", f"Supernodes {action}: stored with experiment {key}.")


def quarantine(handle) -> None:
    """Quarantine button callback: the picked heads to governance, with the graph as evidence."""
    current: GraphRun = st.session_state[GRAPH_RUN]
    chosen = st.session_state.get("graph_quarantine_heads") or []
    g = current.graph
    try:
        report = core.governance(handle).quarantine(
            chosen, reason=(st.session_state.get("graph_quarantine_reason") or "").strip(), level="projection",
            experiment=current.key, effect=f"graph: total effect on {g.output_label}", prompt=g.prompt, target=g.target)
    except SynapseError as exc:
        st.session_state[REPORT] = ("error", str(exc))
    else:
        st.session_state[REPORT] = govtables.report_message(report)
    core.refresh_status()


def feature_note(current: GraphRun, node) -> str | None:
    """Markdown under a feature node's details: a link to its Features page, or why there is none."""
    if node.kind != "feature":
        return None
    try:
        name = graph_feature_name([i for i in list_saes() if i.name in current.transcoders], node.layer, node.feature)
    except SynapseError as exc:  # a damaged SAE folder: say so where the link would be
        return f"No feature page: {exc}"
    if name is None:
        return (f"No feature page: layer {node.layer}'s transcoder is a folder outside the SAE catalog, which the "
                "Features page does not list.")
    return f"Feature page: [{name}]({feature_url(name)})"


def transcoder_choices() -> list[str]:
    """Catalog transcoders that can replace an MLP in a graph (they read a layer's MLP input)."""
    try:
        return [i.name for i in list_saes() if i.hook_name == f"blocks.{i.layer}.ln2.hook_normalized"]
    except SynapseError:  # a damaged SAE folder: the graph works without transcoders; Features reports it
        return []


def to_discover() -> None:
    """Button callback: the graph's prompt, target and contrast written into the Discover page's widgets,
    whose verification ablates each head at every position."""
    g = st.session_state[GRAPH_RUN].graph
    st.session_state.update({"discover_mode": ui_discover.SINGLE, "discover_prompt": g.prompt,
                             "discover_target": g.target, "discover_contrast": g.contrast or ""})
    st.session_state[REPORT] = ("info", ("Discover is filled with this prompt, target and contrast: open it and "
                                         "press Run."))


def summary_cards(g: AttributionGraph) -> list[dict]:
    rho = "n/a" if g.rho is None else f"{g.rho:.2f}"
    return [
        {"label": g.output_label, "value": f"{g.output_value:+.3f}"},
        {"label": "completeness error (output)", "value": f"{g.completeness_error:.1e}",
             "help": "|direct inputs of the output + its constant − the real model's value|; the worst node: "
                  f"{g.worst_node_error:.1e} ({g.worst_node})"},
        {"label": "replacement / completeness score", "value": f"{g.replacement_score:.2f} / {g.completeness_score:.2f}",
             "help": "circuit-tracer's scores: 1.0 when MLP blocks are whole nodes (no error nodes)"},
        {"label": f"Spearman's rho, claimed vs measured ({len(g.claims)} nodes)", "value": rho},
    ]


def _rows(g: AttributionGraph) -> dict[str, int]:
    """Drawn row of each kept node: the distinct (layer, kind) levels present, tokens lowest, output highest."""
    def level(n):
        if n.kind == "token":
            return 0
        if n.kind == "logit":
            return 2 * g.n_layers + 1
        return 2 * n.layer + (1 if n.kind == "head" else 2)

    levels = sorted({level(n) for n in g.nodes})
    rank = {lv: i for i, lv in enumerate(levels)}
    return {n.id: rank[level(n)] for n in g.nodes}


def drawing(g: AttributionGraph) -> tuple[list[Node], list[Edge], Config]:
    """The pruned graph laid out by hand (physics off): positions left to right, tokens at the bottom, the
    output at the top, one row per layer's heads and one per its MLPs (empty rows left out). Node size
    grows with influence; edges are blue when they push the target up, red when they push it down."""
    rows = _rows(g)
    top = max(rows.values(), default=0)
    crowd: dict[tuple[int, int], list] = {}
    for n in g.nodes:
        crowd.setdefault((n.position, rows[n.id]), []).append(n)
    biggest = max((n.influence for n in g.nodes if n.kind != "logit"), default=1.0) or 1.0
    names = {m: s.name for s in g.supernodes for m in s.members}
    nodes = []
    for (pos, row), group in crowd.items():
        for i, n in enumerate(group):
            x = DX * pos + (i - (len(group) - 1) / 2) * min(22, DX / max(len(group), 1))
            label = n.label if n.kind != "token" else repr(n.token)
            size = 8 + 18 * min(n.influence / biggest, 1.0) if n.kind != "logit" else 24
            title = f"{n.id}: value {n.value:+.3f}, influence {n.influence:.3f}" + (
                f" · supernode {names[n.id]!r}" if n.id in names else "")
            nodes.append(Node(id=n.id, label=label if n.kind in ("token", "logit") or len(group) == 1 else "",
                              size=size, color=COLORS[n.kind], x=x, y=DY * (top - row), title=title))
    strongest = max((abs(e.weight) for e in g.edges), default=1.0) or 1.0
    edges = [Edge(e.source, e.target, width=0.5 + 3 * abs(e.weight) / strongest,
                  color="#2b6cb0" if e.weight > 0 else "#c53030", title=f"{e.weight:+.4f}") for e in g.edges]
    config = Config(height=min(max(DY * (top + 1) + 80, 360), 1400), directed=True, physics=False, hierarchical=False,
                    groups={},  # Config's default None makes vis-network log 'Invalid type received for "groups"'
                    nodes={"font": {"size": 12, "color": "#1C2233", "strokeWidth": 3, "strokeColor": "#ffffff"}},
                    edges={"smooth": False, "arrows": {"to": {"enabled": True, "scaleFactor": 0.4}}},
                    interaction={"zoomView": False, "hover": True})
    config.width = "100%"
    return nodes, edges, config


def node_table(g: AttributionGraph) -> pd.DataFrame:
    """The kept nodes, most influential first."""
    names = {m: s.name for s in g.supernodes for m in s.members}
    rows = [{"node": n.id, "kind": n.kind, "layer": n.layer, "head": n.head, "position": n.position,
             "token": n.token, "value": n.value, "influence": n.influence, "supernode": names.get(n.id, "")}
            for n in sorted(g.nodes, key=lambda n: -n.influence)]
    return pd.DataFrame(rows, columns=["node", "kind", "layer", "head", "position", "token", "value", "influence",
                                       "supernode"])


def claim_table(g: AttributionGraph) -> pd.DataFrame:
    rows = []
    for c in g.claims:
        disagree = (c.claimed * c.measured < 0 or
                    max(abs(c.claimed), abs(c.measured)) > DISAGREE * max(min(abs(c.claimed), abs(c.measured)), 1e-9))
        rows.append({"node": c.node, "claimed (frozen model)": c.claimed, "measured (real ablation)": c.measured,
                     "agree": "no" if disagree else "yes"})
    return pd.DataFrame(rows, columns=["node", "claimed (frozen model)", "measured (real ablation)", "agree"])


def edge_lists(g: AttributionGraph, node_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    incoming, outgoing = g.top_edges(node_id, k=8)

    def frame(items, col):
        return pd.DataFrame([{col: n.id, "kind": n.kind, "weight": w} for n, w in items], columns=[col, "kind", "weight"])

    return frame(incoming, "from"), frame(outgoing, "to")


def supernode_table(g: AttributionGraph) -> pd.DataFrame:
    return pd.DataFrame([{"supernode": s.name, "members": ", ".join(s.members), "size": len(s.members)}
                         for s in g.supernodes], columns=["supernode", "members", "size"])


def heads_in(g: AttributionGraph) -> list[str]:
    """The distinct heads ("L.H") among the kept nodes, most influential first: Discover's and governance's form."""
    seen = {}
    for n in sorted(g.nodes, key=lambda n: -n.influence):
        if n.kind == "head":
            seen.setdefault(f"{n.layer}.{n.head}", None)
    return list(seen)
