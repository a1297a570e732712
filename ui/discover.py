"""Builders for the Discover page: the run through the result store, its tables, charts and circuit graph.

No st.cache_* here: the one cached factory this page needs (the result store) lives in core.py.
Effects are metric(ablated) - metric(clean): negative means the head pushes the model towards the target.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from streamlit_agraph import Config, Edge, Node

from synapse_core.analysis.discovery import MIN_DRAWS, RHO_HEADS, STAGES, DiscoveryResult
from synapse_core.common import settings
from synapse_core.common.errors import BadInput, SynapseError
from synapse_core.experiments.discoveries import run_discovery
from synapse_core.experiments.records import load_experiment
from synapse_core.interventions.promptset import PromptCase, parse_prompt_csv, parse_prompt_lines
from ui import core, govtables
from ui import cost as ui_cost
from ui import trace as ui_trace

SINGLE, PROMPT_SET = "One prompt", "Prompt set"
RANKING_LABELS = {"atp": "attribution patching (one backward pass)",
                  "atp*": "AtP* (later softmaxes recomputed, GradDrop: misses fewer heads, ~25x slower)"}
QUARANTINE_HEADS = "discover_quarantine_heads"  # multiselect: the heads the Quarantine button hands over
QUARANTINE_REASON = "discover_quarantine_reason"  # text input: the reason recorded with them
QUARANTINE_REPORT = "discover_quarantine_report"  # (st function name, message) of the last Quarantine press
JOB = "discover_job"  # ui/jobs.py key of a running discovery: its Cancel button is discover_job_cancel
OPENED_LINK = "discover_opened_link"  # the ?experiment= hash already opened (a later Run is not overwritten)


@dataclass(frozen=True)
class DiscoveryRun:
    """A discovery as the page shows it (and as the Governance page reads it: .result and .key)."""

    result: DiscoveryResult
    key: str  # the experiment's content hash
    from_cache: bool  # answered from the result store
    notes: tuple[str, ...]  # store notes, e.g. an unreadable entry that was replaced
    outdated: str = ""  # reopened, but made by another engine: which one (shown instead of "answered from the store")


def work(handle, config):
    """The job (ui/jobs.py) of one discovery: work(progress, cancel) -> DiscoveryRun, answered from the
    result store when the same config ran before, its per-prompt work on the configured job engine
    (here, or Ray actors: the same experiment). The store and engine are read here, in the script run."""
    store, engine = core.result_store(str(settings.subdir("results"))), core.job_engine()

    def run(progress, cancel) -> DiscoveryRun:
        exp = run_discovery(handle, config, store, stage_progress(progress), engine=engine, cancel=cancel)
        return DiscoveryRun(exp.result, exp.hash, exp.from_cache, tuple(exp.notes))

    return run


def keep(found: DiscoveryRun | None) -> None:
    """What the page shows next: the finished discovery, or none after a failed or cancelled run."""
    if found is None:
        st.session_state.pop(core.LAST_DISCOVERY, None)
    else:
        st.session_state[core.LAST_DISCOVERY] = found


def reopen(key: str) -> DiscoveryRun:
    """The stored discovery of a `?experiment=` link; BadInput when none is stored under `key` or it is
    another kind of experiment, StoreError when it cannot be read."""
    return _reopen(key)[0]


def _reopen(key: str):
    exp = load_experiment(core.result_store(str(settings.subdir("results"))), key)
    if exp is None:
        raise BadInput(f"no experiment {key} is stored here: it was deleted, or made on another machine")
    if not isinstance(exp.result, DiscoveryResult):
        raise BadInput(f"experiment {key} is a {exp.config.kind}, not a discovery: open it on the History page")
    outdated = (exp.engine or "before versions were kept") if exp.outdated else ""
    return DiscoveryRun(exp.result, exp.hash, not outdated, tuple(exp.notes), outdated), exp.config


# The page's input widgets and their defaults. Their values live in session state only (no value=):
# the guided demo and a share link write them, and a widget default also set through session state
# makes Streamlit log a warning.
INPUT_DEFAULTS = {"discover_top_k": 5, "discover_pairs": 10, "discover_verify": RHO_HEADS,
                  "discover_draws": MIN_DRAWS, "discover_seed": 0, "discover_ranking": "atp"}


def set_defaults(state) -> None:
    for key, value in INPUT_DEFAULTS.items():
        state.setdefault(key, value)


def inputs_of(config) -> dict:
    """Widget values that ask for the discovery `config` describes: what a share link puts back."""
    one = len(config.prompts) == 1
    inputs = {"discover_mode": SINGLE if one else PROMPT_SET, "discover_top_k": config.top_k_heads,
              "discover_pairs": config.max_pair_sweeps, "discover_verify": config.verify_heads,
              "discover_draws": config.baseline_draws, "discover_seed": config.seed,
              "discover_ranking": getattr(config, "ranking", "atp")}
    if one:
        inputs.update(discover_prompt=config.prompts[0], discover_target=config.targets[0],
                      discover_contrast=config.contrasts[0] or "")
    else:  # quoted fields keep their leading spaces
        inputs["discover_lines"] = "\n".join(
            f'{p} | "{t}"' + (f' | "{c}"' if c else "") for p, t, c in zip(config.prompts, config.targets,
                                                                      config.contrasts))
    return inputs


def open_link() -> None:
    """Show the discovery of a `?experiment=` link (once per link) with the inputs that made it in the
    widgets. Call before the widgets are drawn: their values cannot change after that in a run."""
    def reopen_with_inputs(key: str) -> DiscoveryRun:
        found, config = _reopen(key)
        st.session_state.update(inputs_of(config))
        return found
    core.open_shared_link(OPENED_LINK, core.LAST_DISCOVERY, reopen_with_inputs)


def cases(lines: str, upload) -> tuple[PromptCase, ...]:
    """A prompt set from an uploaded CSV when there is one, else from `prompt | target | contrast` lines."""
    if upload is not None:
        return parse_prompt_csv(upload.getvalue())
    if not (lines or "").strip():
        raise BadInput("the prompt set is empty: write one `prompt | target | contrast` per line or upload a CSV")
    return parse_prompt_lines(lines)


STAGE_TEXT = {  # what each engine stage does, for the progress bar
    "ranking": "ranking every head (AtP* or attribution patching)",
    "verification": "verifying the strongest candidates by ablation",
    "pairs": "ablating pairs of circuit heads together",
    "baseline": "ablating the circuit and random head sets",
    "held_out": "judging the circuit on the held-out prompts",
}


def stage_progress(progress):
    """A discovery's report(stage, done, total) as a job's progress(done, total, message) over the whole
    run (ui/jobs.py's bar): each stage fills an equal share of it."""
    def report(stage: str, done: int, total: int) -> None:
        i = STAGES.index(stage)
        where = f" · prompt {min(done + 1, total)} of {total}" if total > 1 else ""
        share = int(1000 * (i + (min(done / total, 1.0) if total else 1.0)))
        progress(share, 1000 * len(STAGES), f"Stage {i + 1}/{len(STAGES)}: {STAGE_TEXT[stage]}{where}")
    return report


def quarantine(handle, run: DiscoveryRun) -> None:
    """Quarantine button callback: hand the chosen heads to governance with the discovery as evidence.
    It runs before the rerun, so the sidebar's masks in force already show the change."""
    chosen = st.session_state.get(QUARANTINE_HEADS) or []
    case = run.result.cases[0]
    try:
        report = core.governance(handle).quarantine(
            chosen, reason=(st.session_state.get(QUARANTINE_REASON) or "").strip(), level="projection",
            experiment=run.key, effect=quarantine_effect(run.result, chosen) if chosen else None,
            prompt=case.prompt, target=case.target, cost=ui_cost.evidence(handle, chosen, "projection"))
    except SynapseError as exc:
        st.session_state[QUARANTINE_REPORT] = ("error", str(exc))
    else:
        st.session_state[QUARANTINE_REPORT] = govtables.report_message(report)
    core.refresh_status()


# ---------------------------------------------------------------- tables
def short(ref) -> str:
    """"L.H": the page's head label, and what governance takes."""
    return f"{ref.layer}.{ref.head}"


def head_table(result: DiscoveryResult, heads=None) -> pd.DataFrame:
    """One row per head (the circuit by default), ordered by verified effect; spreads only for a prompt set."""
    heads = result.heads if heads is None else heads
    rows = [{"rank": i + 1, "head": short(h), "layer": h.layer, "estimated effect": h.estimated_effect,
             "verified effect": h.verified_effect, "estimated std": h.estimated_std,
             "verified std": h.verified_std, "estimate rank": h.estimate_rank} for i, h in enumerate(heads)]
    frame = pd.DataFrame(rows, columns=["rank", "head", "layer", "estimated effect", "verified effect",
                                        "estimated std", "verified std", "estimate rank"])
    if len(result.cases) == 1:
        frame = frame.drop(columns=["estimated std", "verified std"])
    return frame


def pair_table(result: DiscoveryResult, interacting_first: bool = False) -> pd.DataFrame:
    """One row per ablated pair; interacting_first orders them by |interaction|, largest first."""
    pairs = sorted(result.pairs, key=lambda p: -abs(p.interaction)) if interacting_first else result.pairs
    return pd.DataFrame([{"a": short(p.a), "b": short(p.b), "joint effect": p.joint_effect,
                          "sum of singles": p.sum_of_singles, "interaction": p.interaction, "label": p.label}
                         for p in pairs],
                        columns=["a", "b", "joint effect", "sum of singles", "interaction", "label"])


def judgements(result: DiscoveryResult) -> list[tuple]:
    """(CircuitEffect, where it was judged) for the verdict boxes: in sample, then held out when there is one."""
    chosen = len(result.circuit.prompts)
    if result.held_out is None:
        return [(result.circuit, "In sample: " + result.evaluation.removeprefix("in-sample only: ") + ".")]
    held = len(result.held_out.prompts)
    return [(result.circuit, f"In sample: judged on the {chosen} training prompt(s) the circuit was chosen on."),
            (result.held_out, f"Out of sample: judged on the {held} held-out prompt(s) it was not chosen on.")]


def candidates_csv(result: DiscoveryResult) -> str:
    frame = head_table(result, result.candidates)
    frame.insert(2, "in circuit", frame["head"].isin({short(h) for h in result.heads}))
    return frame.to_csv(index=False)


def result_json(result: DiscoveryResult, key: str) -> str:
    return json.dumps({**result.to_json(), "experiment": key}, indent=2)


def rho_text(result: DiscoveryResult) -> str:
    return "–" if result.spearman_rho is None else f"{result.spearman_rho:.2f}"


def summary_cards(result: DiscoveryResult) -> list[dict]:
    """st.metric arguments (label, value, delta, help) of the circuit-vs-random cards."""
    c, size = result.circuit, len(result.circuit.heads)
    return [
        dict(label=f"Circuit effect ({result.metric})", value=f"{c.effect:+.3f}",
             delta=f"{c.metric_before:.2f} → {c.metric_after:.2f}",
             help=f"{result.metric} before → after ablating the {size} heads together"
                  + (f"; spread over prompts {c.effect_std:.3f}" if len(result.cases) > 1 else "")),
        dict(label="Random sets (mean)", value=f"{c.random_mean:+.3f}", delta=f"± {c.random_std:.3f} std",
             help=f"{result.metric} change when ablating each of {len(c.random_effects)} random {size}-head sets "
                  f"(seed {c.seed}): mean ± standard deviation"),
        # the value is the rate after ablation alone: "100% → 100%" does not fit a quarter of the page
        dict(label="Target rate", value=f"{c.target_rate_after:.0%}",
             delta=f"from {c.target_rate_before:.0%}; random {c.random_target_rate:.0%}",
             help=f"prompts whose top-1 next token is the target: {c.target_rate_before:.0%} before → "
                  f"{c.target_rate_after:.0%} after ablating the circuit; {c.random_target_rate:.0%} with a random "
                  "set ablated instead (mean over draws)"),
        dict(label="Spearman's rho", value=rho_text(result), delta=f"over the top {result.rho_heads} heads",
             help="rank correlation of attribution estimates with verified effects over the heads of largest "
                  "|estimate|"),
    ]


def quarantine_effect(result: DiscoveryResult, chosen: list[str]) -> str:
    """The evidence a quarantine records: each chosen head's verified effect (as the Governance page words it)."""
    effects = {short(h): h.verified_effect for h in result.candidates}
    if len(chosen) == 1:
        return f"{result.metric} {effects[chosen[0]]:+.3f} when ablated"
    alone = ", ".join(f"{name} {effects[name]:+.3f}" for name in chosen)
    return f"{result.metric} when ablated alone: {alone}"


# ---------------------------------------------------------------- charts
def effect_bars(result: DiscoveryResult) -> alt.Chart:
    """Estimated vs verified effect of every verified candidate, heads in verified order."""
    in_circuit = {short(h) for h in result.heads}
    names = [short(h) for h in result.candidates]
    frame = pd.DataFrame([
        {"head": short(h), "kind": kind, "effect": value, "circuit": short(h) in in_circuit}
        for h in result.candidates
        for kind, value in (("estimated", h.estimated_effect), ("verified", h.verified_effect))])
    rows, y_axis = ui_trace.heatmap_rows(len(names))
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("effect:Q", title=f"change in {result.metric} when ablated (negative: pushes toward the target)"),
        y=alt.Y("head:N", sort=names, title="head (L.H)", axis=y_axis),
        yOffset=alt.YOffset("kind:N", sort=["estimated", "verified"]),
        color=alt.Color("kind:N", scale=alt.Scale(domain=["estimated", "verified"], range=["#9fb3f5", "#1f3fbf"]),
                        title=None, legend=alt.Legend(orient="top")),
        tooltip=["head", "kind", alt.Tooltip("effect:Q", format=".3f"), "circuit"],
    ).properties(height=rows + 70)


def grid_frame(result: DiscoveryResult) -> pd.DataFrame:
    """Long table (layer, head, estimate, verified, effect, source, circuit) of every head: `effect` is the
    verified effect where the head was verified by ablation, else its attribution estimate (`source` says
    which), so the verified heads read as they were measured."""
    grid = result.estimates
    layers, heads = np.indices(grid.shape)
    circuit = {(h.layer, h.head) for h in result.heads}
    verified = {(h.layer, h.head): h.verified_effect for h in result.candidates}
    cells = list(zip(layers.ravel().tolist(), heads.ravel().tolist()))
    frame = pd.DataFrame({
        "layer": layers.ravel(), "head": heads.ravel(), "estimate": grid.ravel().astype(float),
        "verified": [verified.get(c, np.nan) for c in cells],
        "circuit": [c in circuit for c in cells],
    })
    frame["effect"] = frame["verified"].fillna(frame["estimate"])
    frame["source"] = np.where(frame["verified"].notna(), "verified", "estimated")
    return frame


def overlay_heatmap(frame: pd.DataFrame) -> alt.Chart:
    """The layer x head grid of effects (verified where measured, else estimated); circuit heads outlined
    in black (one dataset, conditional stroke)."""
    rows, y_axis = ui_trace.heatmap_rows(frame["layer"].nunique())
    bound = float(frame["effect"].abs().max()) or 1.0
    return alt.Chart(frame).mark_rect(strokeWidth=3).encode(
        x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("layer:O", title="layer", sort="descending", axis=y_axis),
        color=alt.Color("effect:Q", title="effect",
                        scale=alt.Scale(scheme="redblue", domain=[-bound, bound], domainMid=0)),
        stroke=alt.condition("datum.circuit", alt.value("#111111"), alt.value(None)),
        tooltip=["layer", "head", alt.Tooltip("effect:Q", format="+.3f"), "source",
                 alt.Tooltip("estimate:Q", format="+.3f"), alt.Tooltip("verified:Q", format="+.3f"), "circuit"],
    ).properties(height=rows + 50)


# ---------------------------------------------------------------- graph
GRAPH_DX, GRAPH_DY = 260, 120  # px between layer columns, and between heads of one layer
GRAPH_ZIG = 150  # px odd columns sit lower: a straight edge between columns then clears the nodes between


def circuit_graph(result: DiscoveryResult) -> tuple[list[Node], list[Edge], Config]:
    """The circuit as agraph nodes and edges, laid out by hand (physics off): one column per layer of the
    circuit, left to right, so composition edges always point rightwards; odd columns sit GRAPH_ZIG lower,
    so an edge that skips columns passes between their nodes instead of through them (and its label
    stays visible). Node size grows with |verified effect| relative to the strongest head; edge labels
    give the composition weight and its kind (q/k/v), edge width the weight relative to the strongest.
    """
    by_layer = defaultdict(list)
    for h in sorted(result.heads, key=lambda h: (h.layer, h.head)):
        by_layer[h.layer].append(h)
    top = max((abs(h.verified_effect) for h in result.heads), default=1.0) or 1.0
    nodes = []
    for col, layer in enumerate(sorted(by_layer)):
        column = by_layer[layer]
        for row, h in enumerate(column):
            y = GRAPH_DY * (row - (len(column) - 1) / 2) + GRAPH_ZIG * (col % 2)
            color = "#c62828" if h.verified_effect < 0 else "#8a93a6"
            nodes.append(Node(id=short(h), label=f"{short(h)}\n{h.verified_effect:+.2f}",
                              size=10 + 20 * abs(h.verified_effect) / top, color=color, x=GRAPH_DX * col, y=y,
                              title=f"{h.name}: verified {h.verified_effect:+.3f}, "
                                    f"estimated {h.estimated_effect:+.3f}"))
    strongest = max((e.weight for e in result.edges), default=1.0) or 1.0
    edges = [Edge(short(e.sender), short(e.receiver), label=f"{e.weight:.2f} {e.kind}",
                  width=1 + 3 * e.weight / strongest, title=f"Q {e.q:.3f} · K {e.k:.3f} · V {e.v:.3f}",
                  color="#8a93a6") for e in result.edges]
    tallest = max((len(c) for c in by_layer.values()), default=1)
    config = Config(
        height=min(max(GRAPH_DY * tallest + GRAPH_ZIG + 120, 360), 900), directed=True, physics=False,
        hierarchical=False, groups={},  # Config's default None makes vis-network log 'Invalid type ... "groups"'
        nodes={"font": {"size": 14, "color": "#1C2233", "strokeWidth": 3, "strokeColor": "#ffffff", "multi": False}},
        edges={"font": {"size": 12, "color": "#4a5266", "background": "#ffffff", "strokeWidth": 0},
               "smooth": False, "arrows": {"to": {"enabled": True, "scaleFactor": 0.6}}},
        interaction={"zoomView": False, "hover": True},  # no scroll-wheel zoom: the page must scroll
    )
    config.width = "100%"  # Config writes "<n>px"; a fixed width overflows the page column
    return nodes, edges, config


def edge_table(result: DiscoveryResult) -> pd.DataFrame:
    return pd.DataFrame([{"from": short(e.sender), "to": short(e.receiver), "weight": e.weight, "kind": e.kind,
                          "Q": e.q, "K": e.k, "V": e.v} for e in result.edges],
                        columns=["from", "to", "weight", "kind", "Q", "K", "V"])
