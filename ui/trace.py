"""Chart, table and download builders of the Trace page (and the heatmap row sizing other pages
share). No Streamlit caches here: those live in core.py."""
from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd
from streamlit_agraph import Config, Edge, Node

from synapse_core.analysis.influence import InfluenceResult
from synapse_core.analysis.trace import TraceResult
from ui import core
from ui.names import short_name


def show_token(token: str) -> str:
    """A token made visible: newlines and tabs escaped, leading/trailing spaces as ·."""
    text = token.replace("\n", "\\n").replace("\t", "\\t")
    stripped = text.strip(" ")
    lead, trail = len(text) - len(text.lstrip(" ")), len(text) - len(text.rstrip(" "))
    return "·" * lead + stripped + "·" * trail if stripped else "·" * len(text)


def labels(tokens) -> list[str]:
    """Unique axis labels "pos token" (tokens repeat, positions do not)."""
    return [f"{i:>3} {show_token(t)}" for i, t in enumerate(tokens)]


SAMPLED_P = "p (sampled from)"  # column: p(token) under the distribution generation drew it from
MODEL_P = "p (model)"  # column: p(token) under the model at temperature 1 over the whole vocabulary


def summary_cards(handle, result: TraceResult) -> list[dict]:
    """The four cards over a trace (st.metric keyword arguments): backend, fidelity, lineage depth, masks."""
    dtype = core.short_dtype(handle)
    fid, path = result.fidelity, result.thought_path
    masked = ", ".join(f"{m.layer}.{m.head} ({m.level})" for m in result.masked_heads) or "none"
    features = ", ".join(m.feature for m in getattr(result, "masked_features", ()))  # older stored traces: none
    return [
        {"label": "Backend", "value": f"{handle.device.type} · {dtype}",
         "help": f"Hugging Face transformers on {handle.device} with {dtype} weights"},
        {"label": "Trace fidelity", "value": f"{fid.argmax_agreement:.0%}",
         "delta": f"max logit diff {fid.max_logit_diff:.1e}", "delta_color": "off", "delta_arrow": "off",
         "help": "The heads are read in one forward pass over the prompt and the generated tokens (masks on). Its "
                 "logits are compared with the logits generation chose from, whatever the sampling: share of steps "
                 f"with the same argmax, and the largest logit difference ({fid.max_logit_diff:.3g})."},
        {"label": "Lineage depth", "value": f"{path.depth} of {len(path.heads)}",
         "help": f"Heads on the thought path that carry more than {path.share_threshold:.0%} of their layer's "
                 f"activity (twice an even share among {handle.arch.n_heads} heads). It changes with the input."},
        {"label": "Masked heads", "value": len(result.masked_heads),
         "delta": ("every one reads 0" if fid.masks_verified else f"not 0: {', '.join(fid.unverified_masks)}")
         if result.masked_heads else None, "delta_color": "off" if fid.masks_verified else "inverse",
         "delta_arrow": "off",
         "help": f"{masked}. Checked in the fidelity pass: a masked head's input to the output projection must be 0."
                 + (f" Quarantined SAE features, zeroed at their site in every pass: {features}." if features else "")},
    ]


def token_table(result: TraceResult) -> pd.DataFrame:
    return pd.DataFrame({
        "token": [show_token(t) for t in result.generated_tokens],
        SAMPLED_P: result.sampled_probs,
        MODEL_P: result.model_probs,
    })


def activity_frame(result: TraceResult, step: int | None = None) -> pd.DataFrame:
    """Long table (layer, head, activity, masked) of the mean activity, or of one step."""
    grid = result.head_activity if step is None else result.step_activity[step]
    masked = {(m.layer, m.head) for m in result.masked_heads}
    layers, heads = np.indices(grid.shape)
    return pd.DataFrame({
        "layer": layers.ravel(), "head": heads.ravel(), "activity": grid.ravel().astype(float),
        "masked": [(int(l), int(h)) in masked for l, h in zip(layers.ravel(), heads.ravel())],
    })


ROW_PX = 18  # height of one heatmap row: room for a 12 px label, so every row keeps its label
MAX_ROWS_PX = 900  # long prompts: rows shrink below ROW_PX rather than the chart growing past this


def heatmap_rows(n: int) -> tuple[int, alt.Axis]:
    """Plot height for n labelled rows (tokens, layers), and a y axis that labels every row while they fit.

    Streamlit's vega-embed theme sizes a chart with autosize "fit" (axes included); callers add
    their x axis's extent to this height so the rows themselves get ROW_PX each.
    """
    height = min(ROW_PX * n, MAX_ROWS_PX)
    readable = height / max(n, 1) >= 11  # below that, 12 px labels collide: let vega thin them
    return height, alt.Axis(labelOverlap=False if readable else "greedy", labelLimit=160)


def activity_heatmap(frame: pd.DataFrame) -> alt.Chart:
    rows, y_axis = heatmap_rows(frame["layer"].nunique())
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("layer:O", title="layer", sort="descending", axis=y_axis),
        color=alt.Color("activity:Q", scale=alt.Scale(scheme="viridis"), title="activity"),
        # a masked head reads 0, like a quiet head: outline it so the two read apart
        stroke=alt.condition("datum.masked", alt.value("#e4572e"), alt.value(None)),
        strokeWidth=alt.condition("datum.masked", alt.value(2.5), alt.value(0)),
        tooltip=["layer", "head", alt.Tooltip("activity:Q", format=".3f"), "masked"],
    ).properties(height=rows + 50)  # + the head axis


def _label_extent(names) -> int:
    """Pixels a -90 degree token-label axis with its title takes below the plot."""
    return 6 * max((len(n) for n in names), default=1) + 45


ATTN_SIDE_PX = 540  # a short context's cells grow (square) until the matrix is this tall, or CELL_MAX_PX a cell
CELL_MAX_PX = 36
LEGEND_PX = 90  # the colour legend right of the matrix


def attention_cell(n: int) -> float:
    """Side of one square cell of an n x n attention matrix: ROW_PX or more while rows fit (as heatmap_rows
    sizes them), up to CELL_MAX_PX for a short context, so the rows are never flat strips."""
    rows, _ = heatmap_rows(n)
    return max(rows / max(n, 1), min(ATTN_SIDE_PX / max(n, 1), CELL_MAX_PX))


def attention_heatmap(matrix: np.ndarray, tokens) -> alt.Chart:
    """The (query, key) matrix with square cells: draw it with st.altair_chart(..., width="content"), since a
    chart stretched to the page's width would make each row a wide, flat strip."""
    names = labels(tokens)[: matrix.shape[0]]
    q, k = np.indices(matrix.shape)
    keep = k <= q  # causal: the upper triangle is always 0
    frame = pd.DataFrame({
        "query": np.array(names)[q[keep]], "key": np.array(names)[k[keep]], "attention": matrix[keep].astype(float),
    })
    _, y_axis = heatmap_rows(len(names))
    side, extent = round(attention_cell(len(names)) * len(names)), _label_extent(names)  # token labels: both axes
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("key:N", sort=names, title="attended-to token (key)", axis=alt.Axis(labelAngle=-90, labelLimit=160)),
        y=alt.Y("query:N", sort=names, title="attending token (query)", axis=y_axis),
        color=alt.Color("attention:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), title="attention"),
        tooltip=["query", "key", alt.Tooltip("attention:Q", format=".3f")],
    ).properties(width=side + extent + LEGEND_PX, height=side + extent)


def influence_bars(result: InfluenceResult) -> alt.Chart:
    names = labels(result.source_tokens)
    frame = pd.DataFrame({"token": names, "score": result.scores.astype(float)})
    frame["sign"] = np.where(frame["score"] >= 0, "raises p(token)", "lowers p(token)")
    rows, y_axis = heatmap_rows(len(names))
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("score:Q", title="share of log p(token) − log p(baseline)"),
        y=alt.Y("token:N", sort=names, title="source token", axis=y_axis),
        color=alt.Color("sign:N", scale=alt.Scale(domain=["raises p(token)", "lowers p(token)"],
                                                   range=["#2e7d32", "#c62828"])),
        tooltip=["token", alt.Tooltip("score:Q", format=".4f")],
    ).properties(height=max(rows, 100) + 50)  # + the numeric x axis and its title


PATH_PER_ROW = 8  # nodes per row of the thought path's snake layout
PATH_DX, PATH_DY = 125, 150  # px between neighbours in a row, and between rows (room for labels)


def path_graph(result: TraceResult) -> tuple[list[Node], list[Edge], Config]:
    """The thought path as agraph nodes and edges, laid out as a snake: rows of PATH_PER_ROW nodes,
    alternately left to right and right to left, so 30+ hops fit a ~600 px box at a readable zoom.

    Positions are fixed (physics off): a chain has no structure for a layout engine to find, and a
    single hierarchical row or column of 32 levels is fitted into the box at a zoom that leaves the
    nodes as dots. Node size grows with activity (relative to the path's most active head). Edge labels
    carry composition scores only; activity shares are in the table.
    """
    path = result.thought_path
    top = max((h.activity for h in path.heads), default=1.0) or 1.0
    activity = {f"L{h.layer}.H{h.head}": h.activity for h in path.heads}
    share = {f"L{h.layer}.H{h.head}": h.share for h in path.heads}
    nodes = []
    for i, name in enumerate(path.nodes):
        row, col = divmod(i, PATH_PER_ROW)
        x = PATH_DX * (col if row % 2 == 0 else PATH_PER_ROW - 1 - col)
        place = {"x": x, "y": PATH_DY * row}
        if name in activity:
            nodes.append(Node(id=name, label=short_name(name), size=10 + 14 * activity[name] / top, color="#4B6BFB",
                              title=f"{short_name(name)}: activity {activity[name]:.3f}, {share[name]:.0%} of its layer's",
                              **place))
        else:
            nodes.append(Node(id=name, label=name, size=16, shape="diamond", color="#F4A261", **place))
    edges = [Edge(e.source, e.target, label="" if e.composition is None else f"{e.composition:.2f} {e.kind}",
                  title=e.kind if e.composition is None else f"{e.kind}-composition {e.composition:.4f}",
                  color="#8a93a6") for e in path.edges]
    rows = -(-len(path.nodes) // PATH_PER_ROW)
    config = Config(
        height=min(max(PATH_DY * rows, 300), 900), directed=True, physics=False, hierarchical=False,
        groups={},  # Config's default None makes vis-network log 'Invalid type received for "groups"'
        nodes={"font": {"size": 14, "color": "#1C2233", "strokeWidth": 3, "strokeColor": "#ffffff"}},
        edges={"font": {"size": 12, "color": "#4a5266", "background": "#ffffff", "strokeWidth": 0},
               "smooth": False, "arrows": {"to": {"enabled": True, "scaleFactor": 0.6}}, "width": 1.5},
        interaction={"zoomView": False, "hover": True},  # no scroll-wheel zoom: the page must scroll
    )
    config.width = "100%"  # Config writes "<n>px"; a fixed width overflows the page column
    return nodes, edges, config


def path_table(result: TraceResult) -> pd.DataFrame:
    """One row per head on the thought path; each column one kind of number: activity (ACTIVITY_METHOD),
    share of the layer's activity, whether that share counts toward the lineage depth, and the
    composition score (and its kind) of the edge from the previous head."""
    path = result.thought_path
    incoming = {e.target: e for e in path.edges}
    return pd.DataFrame([
        {"head": f"{h.layer}.{h.head}", "activity": h.activity, "share of layer": h.share,
         "counts toward depth": h.share > path.share_threshold,
         "composition from previous": incoming[f"L{h.layer}.H{h.head}"].composition,
         "composition kind": None if incoming[f"L{h.layer}.H{h.head}"].composition is None
         else incoming[f"L{h.layer}.H{h.head}"].kind}
        for h in path.heads
    ])


def trace_json(result: TraceResult) -> str:
    return json.dumps(result.to_json(), indent=2)


def head_activity_csv(result: TraceResult) -> str:
    return activity_frame(result).to_csv(index=False)


def step_activity_csv(result: TraceResult) -> str:
    frames = []
    for step, token in enumerate(result.generated_tokens):
        frame = activity_frame(result, step)
        frame.insert(0, "token", token)
        frame.insert(0, "step", step)
        frames.append(frame)
    return pd.concat(frames).to_csv(index=False)
