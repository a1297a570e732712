"""The one UI helper module: every st.cache_resource / st.cache_data, the session-state keys shared
between the sidebar and the pages, and the chart builders the pages render.

The engine (synapse_core) never imports streamlit; this module is the only bridge.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from streamlit_agraph import Config, Edge, Node

import synapse_core
from synapse_core import settings
from synapse_core.errors import SynapseError
from synapse_core.influence import InfluenceResult, token_influence
from synapse_core.patterns import attention_matrix
from synapse_core.spec import MASK_LEVELS, HeadMask, normalize_masks, parse_heads
from synapse_core.store import ResultStore
from synapse_core.trace import TraceResult, trace_config

# Session-state keys shared across pages. Page-local widget keys live in their page.
MODEL_INPUT = "model_spec_input"  # sidebar text input: the spec the user typed
LOADED_SPEC = "loaded_model_spec"  # the spec this session's pages use (set after a successful load)
LOAD_ERROR = "model_load_error"  # message of the last failed load, shown until a load succeeds
MASK_TEXT = "session_mask_heads"  # sidebar text input: heads to mask, "3.1, 5.2"
MASK_LEVEL = "session_mask_level"  # sidebar selectbox: projection | attention | both
TRACE_RUN = "trace_run"  # the TraceRun shown on the Trace page


@dataclass(frozen=True)
class TraceRun:
    """A trace as the Trace page shows it: the result and where it came from."""

    result: TraceResult
    key: str  # the result store's content hash of the request
    from_cache: bool
    notes: tuple[str, ...]  # store notes, e.g. an unreadable entry that was replaced


# ---------------------------------------------------------------- model
@st.cache_resource(show_spinner=False, max_entries=2)
def load_model(spec: str) -> synapse_core.ModelHandle:
    """One loaded model per spec, shared by every session (the engine is thread-safe)."""
    return synapse_core.load_model(spec)


def default_spec() -> str:
    return settings.default_model_spec()


def current_model() -> synapse_core.ModelHandle | None:
    """The model this session uses, or None when none was loaded (e.g. the page runs on its own)."""
    spec = st.session_state.get(LOADED_SPEC)
    return load_model(spec) if spec else None


def require_model() -> synapse_core.ModelHandle:
    """The session's model; without one, say how to get one and stop the page."""
    if LOADED_SPEC not in st.session_state:
        # app.py (which draws the sidebar) never ran in this session. Streamlit runs a page on its own
        # when a fresh server's first visitor opens it directly, because a folder named pages/ sits
        # beside app.py; a visit to the home page switches the server to app.py's st.navigation.
        st.info("No model is loaded: this page ran without Synapse's sidebar. "
                "[Open the home page](./) to load a model, then come back.")
        st.stop()
    handle = current_model()
    if handle is None:
        st.info("No model is loaded: pick one in the sidebar and press **Load**.")
        st.stop()
    return handle


def short_dtype(handle) -> str:
    return str(handle.dtype).removeprefix("torch.")


def model_status(handle) -> str:
    a = handle.arch
    return (
        f"**{handle.name}**  \nfamily `{a.family}` · {a.n_layers} layers × {a.n_heads} heads"
        f" ({a.n_kv_heads} kv) · d_head {a.d_head}  \n{handle.device.type} · {short_dtype(handle)}"
        f" · context {handle.max_context}  \nsource: {handle.source}  \nfingerprint `{handle.fingerprint}`"
    )


def session_masks(handle) -> tuple[HeadMask, ...]:
    """The heads this session masks, validated against the model; SynapseError when invalid."""
    level = st.session_state.get(MASK_LEVEL, MASK_LEVELS[0])
    heads = parse_heads(st.session_state.get(MASK_TEXT, ""))
    return normalize_masks([HeadMask(h.layer, h.head, level) for h in heads], handle.arch)


# ---------------------------------------------------------------- results
@st.cache_resource(show_spinner=False)
def result_store(path: str) -> ResultStore:
    return ResultStore(path)


def run_trace(handle, prompt, max_new_tokens, masks, sampling, progress) -> TraceRun:
    """Trace through the result store: the same request twice is answered from disk."""
    config = trace_config(handle, prompt, max_new_tokens, masks, sampling, capture_attention=True)
    store = result_store(str(settings.subdir("results")))
    entry, from_cache, notes = store.get_or_compute(
        "trace", config,
        lambda: synapse_core.trace(handle, prompt, max_new_tokens, masks=masks, sampling=sampling, progress=progress),
        summary={"prompt": prompt[:80], "model": handle.name},
    )
    return TraceRun(entry.result, entry.key, from_cache, tuple(notes))


def _model_key(handle) -> str:
    return f"{handle.fingerprint}|{handle.dtype}|{handle.device}"


@st.cache_data(show_spinner=False, max_entries=64)
def _attention(_handle, model_key: str, ids: tuple, layer: int, head: int, masks: tuple) -> np.ndarray:
    return attention_matrix(_handle, ids, layer, head, masks=[HeadMask(*m) for m in masks])


def head_attention(handle, result: TraceResult, output_index: int, layer: int, head: int) -> np.ndarray:
    """(q_pos, k_pos) attention of one head over the context of generated token `output_index`."""
    ids = tuple(result.prompt_ids) + tuple(result.generated_ids[:output_index])
    masks = tuple((m.layer, m.head, m.level) for m in result.masked_heads)
    return _attention(handle, _model_key(handle), ids, layer, head, masks)


@st.cache_data(show_spinner=False, max_entries=64)
def _influence(_handle, model_key: str, prompt_ids: tuple, generated_ids: tuple, index: int, masks: tuple):
    return token_influence(_handle, prompt_ids, generated_ids, index, masks=[HeadMask(*m) for m in masks])


def influence(handle, result: TraceResult, output_index: int) -> InfluenceResult:
    masks = tuple((m.layer, m.head, m.level) for m in result.masked_heads)
    return _influence(handle, _model_key(handle), result.prompt_ids, result.generated_ids, output_index, masks)


# ---------------------------------------------------------------- rendering helpers
def show_token(token: str) -> str:
    """A token made visible: newlines and tabs escaped, leading/trailing spaces as ·."""
    text = token.replace("\n", "\\n").replace("\t", "\\t")
    stripped = text.strip(" ")
    lead, trail = len(text) - len(text.lstrip(" ")), len(text) - len(text.rstrip(" "))
    return "·" * lead + stripped + "·" * trail if stripped else "·" * len(text)


def labels(tokens) -> list[str]:
    """Unique axis labels "pos token" (tokens repeat, positions do not)."""
    return [f"{i:>3} {show_token(t)}" for i, t in enumerate(tokens)]


def token_table(result: TraceResult) -> pd.DataFrame:
    return pd.DataFrame({
        "token": [show_token(t) for t in result.generated_tokens],
        "probability": result.token_probs,
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


def _rows(n: int) -> tuple[int, alt.Axis]:
    """Plot height for n labelled rows (tokens, layers), and a y axis that labels every row while they fit.

    Streamlit's vega-embed theme sizes a chart with autosize "fit" (axes included); callers add
    their x axis's extent to this height so the rows themselves get ROW_PX each.
    """
    height = min(ROW_PX * n, MAX_ROWS_PX)
    readable = height / max(n, 1) >= 11  # below that, 12 px labels collide: let vega thin them
    return height, alt.Axis(labelOverlap=False if readable else "greedy", labelLimit=160)


def activity_heatmap(frame: pd.DataFrame) -> alt.Chart:
    rows, y_axis = _rows(frame["layer"].nunique())
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("layer:O", title="layer", sort="descending", axis=y_axis),
        color=alt.Color("activity:Q", scale=alt.Scale(scheme="viridis"), title="activity"),
        tooltip=["layer", "head", alt.Tooltip("activity:Q", format=".3f"), "masked"],
    ).properties(height=rows + 50)  # + the head axis


def _label_extent(names) -> int:
    """Pixels a -90 degree token-label axis with its title takes below the plot."""
    return 6 * max((len(n) for n in names), default=1) + 45


def attention_heatmap(matrix: np.ndarray, tokens) -> alt.Chart:
    names = labels(tokens)[: matrix.shape[0]]
    q, k = np.indices(matrix.shape)
    keep = k <= q  # causal: the upper triangle is always 0
    frame = pd.DataFrame({
        "query": np.array(names)[q[keep]], "key": np.array(names)[k[keep]], "attention": matrix[keep].astype(float),
    })
    rows, y_axis = _rows(len(names))
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("key:N", sort=names, title="attended-to token (key)", axis=alt.Axis(labelAngle=-90)),
        y=alt.Y("query:N", sort=names, title="attending token (query)", axis=y_axis),
        color=alt.Color("attention:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), title="attention"),
        tooltip=["query", "key", alt.Tooltip("attention:Q", format=".3f")],
    ).properties(height=max(rows, 120) + _label_extent(names))


def influence_bars(result: InfluenceResult) -> alt.Chart:
    names = labels(result.source_tokens)
    frame = pd.DataFrame({"token": names, "score": result.scores.astype(float)})
    frame["sign"] = np.where(frame["score"] >= 0, "raises p(token)", "lowers p(token)")
    rows, y_axis = _rows(len(names))
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("score:Q", title="contribution to log p(output token)"),
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
    nodes as dots. Node size grows with activity (relative to the path's most active head).
    """
    path = result.thought_path
    top = max((h.score for h in path.heads), default=1.0) or 1.0
    activity = {f"L{h.layer}.H{h.head}": h.score for h in path.heads}
    nodes = []
    for i, name in enumerate(path.nodes):
        row, col = divmod(i, PATH_PER_ROW)
        x = PATH_DX * (col if row % 2 == 0 else PATH_PER_ROW - 1 - col)
        place = {"x": x, "y": PATH_DY * row}
        if name in activity:
            nodes.append(Node(id=name, label=name, size=10 + 14 * activity[name] / top, color="#4B6BFB",
                              title=f"{name}: activity {activity[name]:.3f}", **place))
        else:
            nodes.append(Node(id=name, label=name, size=16, shape="diamond", color="#F4A261", **place))
    edges = [Edge(e.source, e.target, label=f"{e.weight:.2f} {_edge_kind(e.kind)}",
                  title=f"{e.kind}: {e.weight:.4f}", color="#8a93a6") for e in path.edges]
    rows = -(-len(path.nodes) // PATH_PER_ROW)
    config = Config(
        height=min(max(PATH_DY * rows, 300), 900), directed=True, physics=False, hierarchical=False,
        nodes={"font": {"size": 14, "color": "#1C2233", "strokeWidth": 3, "strokeColor": "#ffffff"}},
        edges={"font": {"size": 12, "color": "#4a5266", "background": "#ffffff", "strokeWidth": 0},
               "smooth": False, "arrows": {"to": {"enabled": True, "scaleFactor": 0.6}}, "width": 1.5},
        interaction={"zoomView": False, "hover": True},  # no scroll-wheel zoom: the page must scroll
    )
    config.width = "100%"  # Config writes "<n>px"; a fixed width overflows the page column
    return nodes, edges, config


def _edge_kind(kind: str) -> str:
    """Short edge kind for the graph label ("activity_share" would crowd the row); the table has the full one."""
    return "share" if kind == "activity_share" else kind


def path_table(result: TraceResult) -> pd.DataFrame:
    activity = {f"L{h.layer}.H{h.head}": h.score for h in result.thought_path.heads}
    return pd.DataFrame([
        {"from": e.source, "to": e.target, "weight": e.weight, "kind": e.kind,
         "activity of 'to'": activity.get(e.target)}
        for e in result.thought_path.edges
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


def show_error(exc: SynapseError) -> None:
    st.error(str(exc))


# ---------------------------------------------------------------- governance: the quarantine in force
# Every run applies the model's stored quarantine unless this session asked for the raw model; the
# sidebar shows what is in force and where the quarantine is governed (embedded or OpenMetadata).
from dataclasses import asdict  # noqa: E402  (this section's imports, kept with it)
from pathlib import Path  # noqa: E402

from synapse_core.governance import Governance, GovernanceStatus  # noqa: E402
from synapse_core.maskstore import MaskStore  # noqa: E402
from synapse_core.omconfig import OMConfig, config_from_secrets  # noqa: E402

USER_NAME = "governance_user_name"  # sidebar text input: who makes quarantine changes (recorded as `by`)
RAW_MODEL = "use_raw_model"  # sidebar toggle: ignore the stored quarantine (session masks still apply)
LAST_DISCOVERY = "last_discovery"  # the Discover page's last result; .heads ordered by verified effect
GOV_REPORT = "governance_report"  # (st function name, message) of the Governance page's last action
GOV_VERIFY = "governance_verify"  # the Verification the Governance page shows
STATUS_TTL_S = 30  # a server's "are you there?" answer is reused this long across reruns


def om_config() -> OMConfig | None:
    """The OpenMetadata server of .streamlit/secrets.toml or the environment; None: embedded mode.
    BadInput when one is configured wrongly (a host that is not a URL, no token)."""
    return config_from_secrets(st.secrets)


def user_name() -> str | None:
    return (st.session_state.get(USER_NAME) or "").strip() or None


def governance(handle) -> Governance:
    """The loaded model's quarantine, changes recorded as this session's user. Built per call, not
    cached: it opens no connection, and the user and the configuration may change between reruns."""
    return Governance(handle, om_config(), user=user_name())


@st.cache_data(ttl=STATUS_TTL_S, show_spinner=False)
def _status(server: str, fingerprint: str, _gov: Governance) -> GovernanceStatus:
    return _gov.status()


def governance_status(gov: Governance) -> GovernanceStatus:
    """Where the quarantine is governed; the server is asked at most once per STATUS_TTL_S, so read
    the counts from gov.masks() / gov.pending(), not from here."""
    if not gov.config:  # embedded: nothing to ask, and its message counts the heads
        return gov.status()
    return _status(gov.config.server, gov.identity.fingerprint, gov)


def refresh_status() -> None:
    """Ask the server again on the next rerun (after a change, a bootstrap or a sync)."""
    _status.clear()


def connection_text(status: GovernanceStatus) -> str:
    if status.mode == "embedded":
        return "Embedded: the quarantine lives in this machine's mask store."
    if status.connected:
        return f"OpenMetadata {status.server_version} at {status.server}"
    return status.error  # the client's message names the server and what to check


def quarantine_masks(handle) -> tuple[HeadMask, ...]:
    """The model's stored quarantine, or () when this session asked for the raw model."""
    if st.session_state.get(RAW_MODEL):
        return ()
    return tuple(MaskStore().masks(handle))


def masks_in_force(handle) -> tuple[HeadMask, ...]:
    """What every run of this session applies: the stored quarantine (unless the raw-model toggle is
    on) and the session masks. A head in both at different levels is masked at "both", so it counts
    once. SynapseError when a mask does not fit the model."""
    levels: dict[tuple[int, int], str] = {}
    for m in (*quarantine_masks(handle), *session_masks(handle)):
        old = levels.get((m.layer, m.head))
        levels[(m.layer, m.head)] = m.level if old in (None, m.level) else "both"
    return normalize_masks([HeadMask(l, h, level) for (l, h), level in levels.items()], handle.arch)


def experiment_url(key: str | None) -> str | None:
    """A link that reopens a stored experiment, when the Ablate page reads `?experiment=`; else None."""
    page = Path(__file__).parent / "pages" / "ablate.py"
    if key and page.exists() and "query_params" in page.read_text():
        return f"ablate?experiment={key}"
    return None


MASK_COLUMNS = ["head", "level", "reason", "experiment", "effect", "prompt", "target", "at", "by", "source"]


def mask_table(entries, links: bool = True) -> pd.DataFrame:
    """The quarantine with its evidence; `experiment` a link when its page exists (and links)."""
    rows = [{**{c: getattr(e, c) for c in MASK_COLUMNS if c != "head"}, "head": e.short,
             "experiment": (experiment_url(e.experiment) if links else None) or e.experiment} for e in entries]
    return pd.DataFrame(rows, columns=MASK_COLUMNS)


def experiment_column():
    """Column config of mask_table's `experiment`: a link showing the hash, or the hash."""
    if experiment_url("0" * 16):
        return st.column_config.LinkColumn("experiment", display_text=r"experiment=(\w+)")
    return st.column_config.TextColumn("experiment")


def audit_table(records) -> pd.DataFrame:
    """The audit log, newest first."""
    return pd.DataFrame([{**asdict(r), "heads": ", ".join(r.heads)} for r in reversed(records)],
                        columns=["at", "by", "action", "heads", "reason", "experiment", "source", "detail"])


def records_json(records) -> str:
    return json.dumps([asdict(r) for r in records], indent=2)


def catalog_table(rows) -> pd.DataFrame:
    """The embedded catalog: one row per column of every table, DEFECTIVE tags shown."""
    return pd.DataFrame([{"table": r.table, "column": r.column, "type": r.data_type, "tags": ", ".join(r.tags),
                          "level": r.level, "reason": r.reason, "description": r.description} for r in rows])


def report_message(report) -> tuple[str, str]:
    """(st function name, message) for a ChangeReport, a SyncReport or a BootstrapReport (which has
    no message of its own; its class lives in the SDK-importing module, hence no isinstance)."""
    if hasattr(report, "edges"):
        text = (f"Catalog bootstrapped: {len(report.created)} created, {len(report.updated)} updated, "
                f"{report.unchanged} unchanged, {report.edges} lineage edge(s); {report.delivered} outbox "
                "change(s) sent.")
        if report.error:
            text += f" {report.pending} change(s) still wait in the outbox: {report.error}."
    else:
        text = report.message
    return ("warning" if getattr(report, "error", None) else "success"), text


@dataclass(frozen=True)
class DiscoveredHead:
    """The top head of the last discovery, with the evidence a quarantine records."""

    head: str  # "L.H"
    effect: str  # e.g. "logit_diff -2.310 when ablated"
    prompt: str | None
    target: str | None
    experiment: str | None  # the discovery's stored hash, when it has one


def top_discovered(found) -> DiscoveredHead | None:
    """The first of `found.heads` (ordered by verified effect); `found` may wrap its result (.result, .key)."""
    result = getattr(found, "result", found)
    heads = getattr(result, "heads", None) or ()
    if not heads:
        return None
    top = heads[0]
    case = (getattr(result, "cases", None) or (None,))[0]
    effect = getattr(top, "verified_effect", None)
    metric = getattr(result, "metric", "metric")
    return DiscoveredHead(
        f"{top.layer}.{top.head}",
        f"{metric} {effect:+.3f} when ablated" if effect is not None else "top head of the discovery",
        getattr(case, "prompt", None), getattr(case, "target", None), getattr(found, "key", None))


# ---------------------------------------------------------------- ablate & history: experiments
# Ablations, sweeps and prompt sets run through the same ResultStore as traces: the same experiment
# twice is answered from disk, and the History page lists, reopens and deletes what is stored there.
from synapse_core import experiments as _experiments  # noqa: E402

ABLATE_RUN = "ablate_run"  # the single-prompt Experiment the Ablate page shows
ABLATE_SWEEP = "ablate_sweep"  # the sweep Experiment the Ablate page shows
ABLATE_PROMPTSET = "ablate_promptset"  # the prompt-set Experiment the Ablate page shows
HISTORY_CONFIRM = "history_confirm_delete"  # hash of the experiment the History page asks to confirm deleting
HISTORY_REPORT = "history_report"  # message of the History page's last delete, shown once


def experiment_store() -> ResultStore:
    return result_store(str(settings.subdir("results")))


def run_experiment(handle, config, progress) -> _experiments.Experiment:
    """Run (or answer from the store) an ablation, sweep or prompt-set config."""
    return _experiments.run_experiment(handle, config, experiment_store(), progress=progress)


def open_experiment(key: str) -> _experiments.Experiment | None:
    """The stored experiment of a `?experiment=` id; None when absent, StoreError when unreadable."""
    return _experiments.load_experiment(experiment_store(), key)
