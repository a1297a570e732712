"""Tables, charts and renderers of the Ablate and History pages.

Builders turn engine results into pandas frames and altair charts; the show_* renderers draw an
experiment (its id, whether the store answered, share link, downloads, and the result) the same way
on both pages. No st.cache_* here: caches and session keys live in core.py.
"""
from __future__ import annotations

from datetime import datetime

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from synapse_core.arch.spec import Intervention, mask_name, parse_heads
from synapse_core.common.errors import BadInput
from synapse_core.common.hashing import engine_version
from synapse_core.experiments.records import Experiment, export_csv, export_json, headline
from synapse_core.interventions.ablation import AblationResult
from synapse_core.interventions.metrics import METRIC_LABELS, TopToken
from synapse_core.interventions.ops import OpSettings, parse_positions
from synapse_core.interventions.promptset import PromptSetResult, parse_prompt_csv, parse_prompt_lines
from synapse_core.interventions.promptsweep import PromptSetSweep
from synapse_core.interventions.reference import parse_reference_prompts
from synapse_core.interventions.sweep import SweepResult
from ui import core, jobs
from ui import trace as ui_trace
from ui.names import short_name, short_names

SITE_LABELS = {"attn.head": "attention head(s)", "attn": "attention layer output", "mlp": "MLP output",
               "resid": "residual stream after the layer"}
OP_LABELS = {"zero": "zero", "mean": "mean over reference prompts", "patch": "patch from a source prompt",
             "steer": "steer: add a direction"}
CARD_METRICS = ("target_prob", "log_prob", "logit_diff")  # the per-run metrics; KL and top-1 get their own cards
CARD_LABELS = {"target_prob": "p(target)", "log_prob": "log p(target)", "logit_diff": "logit diff"}  # fit a card


# ---------------------------------------------------------------- widget values -> engine inputs
def interventions(site: str, heads_text: str, layer: int, op: str, positions_text: str,
                  source: str | None) -> tuple[Intervention, ...]:
    """The interventions the form describes: one per head for site attn.head, else one at `layer`.
    BadInput (naming the value) for a bad head list or position list."""
    positions = parse_positions(positions_text)
    source = (source or None) if op == "patch" else None
    if site == "attn.head":
        heads = parse_heads(heads_text)
        if not heads:
            raise BadInput("no head given: write LAYER.HEAD, comma-separated, e.g. 9.6, 10.0")
        return tuple(Intervention(h.layer, site, op, h.head, positions, source) for h in heads)
    return (Intervention(int(layer), site, op, None, positions, source),)


def op_settings(op: str, reference_text: str = "", plus: str = "", minus: str = "", scale: float = 1.0) -> OpSettings:
    """OpSettings holding only what `op` uses, so an unused widget never changes the experiment hash.
    Mean with an empty reference text uses the shipped default set."""
    if op == "mean" and (reference_text or "").strip():
        return OpSettings(reference=parse_reference_prompts(reference_text))
    if op == "steer":
        prompts = (plus, minus) if (plus or "").strip() and (minus or "").strip() else None
        return OpSettings(scale=float(scale), steer_prompts=prompts)
    return OpSettings()


def prompt_cases(text: str, upload=None):
    """Cases from an uploaded CSV when there is one, else from `prompt | target | contrast` lines."""
    return parse_prompt_csv(upload.getvalue()) if upload is not None else parse_prompt_lines(text)


# ---------------------------------------------------------------- tables
def top_table(tops: tuple[TopToken, ...]) -> pd.DataFrame:
    return pd.DataFrame({"rank": range(1, len(tops) + 1), "token": [ui_trace.show_token(t.token) for t in tops],
                         "prob": [t.prob for t in tops], "logit": [t.logit for t in tops]})


def metric_table(r: AblationResult) -> pd.DataFrame:
    """metric | clean | intervened | change, for every metric the run has (logit diff needs a contrast)."""
    rows = [{"metric": METRIC_LABELS[m], "clean": r.clean.value(m), "intervened": r.intervened.value(m),
             "change": r.delta(m)} for m in CARD_METRICS if r.clean.value(m) is not None]
    rows.append({"metric": METRIC_LABELS["kl"], "clean": 0.0, "intervened": r.kl_divergence, "change": r.kl_divergence})
    return pd.DataFrame(rows)


def feature_list(text: str) -> tuple[int, ...] | None:
    """Feature indices from "12, 7 301"; None for empty text (the sweep then takes the most active)."""
    parts = (text or "").replace(",", " ").split()
    if not parts:
        return None
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise BadInput(f"features {text!r}: write feature indices, comma-separated, e.g. 12, 7, 301") from None


def sweep_frame(r: SweepResult) -> pd.DataFrame:
    """One row per swept component: layer, head, site or feature, name ("L.H" for a head), effect,
    value, kl, top1_changed, masked (a head masked in every run of the sweep: its effect is 0 by
    construction), and the engine's full name."""
    frame = pd.DataFrame(r.effect_rows())
    frame["full name"] = frame["name"]
    frame["name"] = [short_name(n) for n in frame["name"]]
    masked = {(m.layer, m.head) for m in r.masks}
    frame["masked"] = (pd.Series(list(zip(frame["layer"], frame["head"]))).isin(masked)
                       if r.kind == "heads" else False)
    return frame


def top_effects(r: SweepResult, n: int = 10) -> pd.DataFrame:
    """The n largest |effect| rows, heads named "L.H" only (the full names are in the map's tooltip and the JSON)."""
    frame = sweep_frame(r).drop(columns=["full name"])
    return frame.loc[frame["effect"].abs().sort_values(ascending=False).index[:n]].reset_index(drop=True)


def mean_frame(r: PromptSetSweep) -> pd.DataFrame:
    """sweep_frame's rows for a sweep over a prompt set: effect and kl are the means over the prompts,
    value the mean intervened metric, top1_changed the share of prompts whose top-1 token changed."""
    frame = sweep_frame(r.sweeps[0])
    frame["effect"] = r.mean_effects.ravel().astype(float)  # effect_rows walks the cells in C order
    frame["kl"] = r.mean_kl.ravel().astype(float)
    frame["value"] = np.mean([s.values for s in r.sweeps], axis=0).ravel().astype(float)
    frame["top1_changed"] = np.mean([s.top1_changed for s in r.sweeps], axis=0).ravel().astype(float)
    return frame


def promptsweep_prompts(r: PromptSetSweep) -> pd.DataFrame:
    """One row per prompt: its clean metric and the component whose ablation moved it most there."""
    rows = []
    for case, s in zip(r.cases, r.sweeps):
        i, j = np.unravel_index(int(np.abs(s.effects).argmax()), s.effects.shape)
        rows.append({"prompt": case.prompt, "target": ui_trace.show_token(case.target),
                     "contrast": ui_trace.show_token(case.contrast) if case.contrast else None, "clean": s.clean,
                     "largest effect": short_name(s.name(int(i), int(j))), "its effect": float(s.effects[i, j])})
    return pd.DataFrame(rows)


def promptset_frame(r: PromptSetResult) -> pd.DataFrame:
    frame = pd.DataFrame(r.table())
    for col in ("target", "contrast", "clean_top", "intervened_top"):
        frame[col] = [ui_trace.show_token(t) if isinstance(t, str) else t for t in frame[col]]
    first = ["prompt", "target", "contrast", "change", "kl", "top1_changed", "clean_top", "intervened_top"]
    return frame[first + [c for c in frame.columns if c not in first]]  # the headline columns before the raw metrics


# ---------------------------------------------------------------- charts
def feature_bars(r: SweepResult, frame: pd.DataFrame | None = None) -> alt.Chart:
    """The effect of zeroing each swept feature, largest |effect| first, diverging around 0 (frame:
    the rows to draw, sweep_frame(r) by default; mean_frame for a prompt set)."""
    frame = sweep_frame(r) if frame is None else frame
    limit = float(frame["effect"].abs().max()) or 1.0
    order = frame.loc[frame["effect"].abs().sort_values(ascending=False).index, "name"].tolist()
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("effect:Q", title=f"Δ {r.metric}"),
        y=alt.Y("name:N", title="feature", sort=order),
        color=alt.Color("effect:Q", legend=None, scale=alt.Scale(scheme="redblue", domain=[-limit, limit], domainMid=0)),
        tooltip=["name", alt.Tooltip("effect:Q", format="+.4f"), alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("kl:Q", format=".4f"), "top1_changed"],
    ).properties(height=18 * len(frame) + 40)


def sweep_heatmap(r: SweepResult, frame: pd.DataFrame | None = None) -> alt.Chart:
    """The causal map: effect of the operation on each head (layer x head) or each layer's sites
    (layer x site), diverging around 0 so harm and help read apart (frame: the rows to draw,
    sweep_frame(r) by default; mean_frame for a prompt set)."""
    frame = sweep_frame(r) if frame is None else frame
    n_layers = frame["layer"].nunique()
    rows, y_axis = ui_trace.heatmap_rows(n_layers)
    limit = float(frame["effect"].abs().max()) or 1.0
    x = (alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0)) if r.kind == "heads"
         else alt.X("site:N", title="site", sort=list(r.sites), axis=alt.Axis(labelAngle=0)))
    return alt.Chart(frame).mark_rect().encode(
        x=x,
        y=alt.Y("layer:O", title="layer", sort="descending", axis=y_axis),
        color=alt.Color("effect:Q", title=f"Δ {r.metric}",
                        scale=alt.Scale(scheme="redblue", domain=[-limit, limit], domainMid=0)),
        # a masked head reads 0 like a head that does nothing: outline it so the two read apart
        stroke=alt.condition("datum.masked", alt.value("#111111"), alt.value(None)),
        strokeWidth=alt.condition("datum.masked", alt.value(2.5), alt.value(0)),
        tooltip=["name", alt.Tooltip("effect:Q", format="+.4f"), alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("kl:Q", format=".4f"), "top1_changed", "masked", "full name"],
    ).properties(height=rows + 50)


# ---------------------------------------------------------------- running (the Ablate page)
def run_experiment(handle, state_key: str, make_config) -> None:
    """Build the config and run it through the store into session state, with a progress bar and a
    Cancel button (ui/jobs.py); errors shown, never kept."""
    jobs.run_experiment(state_key, handle, make_config, on_done=lambda exp: keep(state_key, exp))


def keep(state_key: str, exp) -> None:
    """What the page shows next: the finished experiment, or nothing after a failed or cancelled run."""
    if exp is None:
        st.session_state.pop(state_key, None)
    else:
        st.session_state[state_key] = exp


def show_last(handle, state_key: str, prefix: str) -> None:
    """The experiment last run into `state_key`, unless it was made with another model (a run left going
    by an earlier script run of the page is waited for first)."""
    jobs.resume(state_key)
    jobs.notice(state_key)
    exp = st.session_state.get(state_key)
    if exp is not None and exp.config.fingerprint != handle.fingerprint:
        st.info(f"The last run was made with {exp.config.model}, not the loaded model: run it again.")
    elif exp is not None:
        show_experiment(exp, prefix)


# ---------------------------------------------------------------- renderers (both pages)
def show_experiment(exp: Experiment, prefix: str) -> None:
    """An experiment's header (id, store, share link, downloads) and its result; widget keys start with prefix."""
    show_header(exp, prefix)
    r = exp.result
    if isinstance(r, AblationResult):
        show_ablation(r, prefix)
    elif isinstance(r, SweepResult):
        show_sweep(r, prefix)
    elif isinstance(r, PromptSetResult):
        show_promptset(r, prefix)
    elif isinstance(r, PromptSetSweep):
        show_promptsweep(r, prefix)
    else:  # e.g. a discovery: the Discover page draws it; here its full record
        st.markdown(f"Drawn in full on its own page: [open it there]({share_url(exp.hash, exp.config.kind)})")
        st.json(r.to_json(), expanded=False)


def share_url(key: str, kind: str) -> str:
    """The link that opens an experiment: traces, discoveries and graphs on their own pages, the rest on Ablate."""
    if kind in ("discover", "trace", "graph"):  # drawn on their own pages
        return f"{kind}?experiment={key}"
    return core.experiment_url(key) or f"history?experiment={key}"


def show_header(exp: Experiment, prefix: str) -> None:
    st.markdown(f"**{short_names(exp.config.title)}**  \n{short_names(headline(exp))}")
    if exp.outdated:
        st.warning(f"Made by an {engine_label(exp.engine, True)}, not this one ({engine_version()}): shown as "
                   f"stored · experiment `{exp.hash}`. Run it again for this engine's numbers.")
    elif exp.from_cache:
        st.success(f"Answered from the store · experiment `{exp.hash}`")
    else:
        st.caption(f"Computed and stored · experiment `{exp.hash}`")
    for note in exp.notes:
        st.warning(note)
    st.markdown(f"Share link: [`?experiment={exp.hash}`]({share_url(exp.hash, exp.config.kind)})")
    json_col, csv_col = st.columns(2)
    json_col.download_button("Experiment (JSON)", export_json(exp), file_name=f"experiment-{exp.hash}.json",
                             mime="application/json", key=f"{prefix}_download_json", on_click="ignore")
    if isinstance(exp.result, (AblationResult, SweepResult, PromptSetResult)):
        csv_col.download_button("Table (CSV)", export_csv(exp), file_name=f"experiment-{exp.hash}.csv",
                                mime="text/csv", key=f"{prefix}_download_csv", on_click="ignore")


def _notes(r) -> None:
    warnings = [w for row in r.rows for w in row.warnings] if isinstance(r, PromptSetResult) else r.warnings
    if warnings:  # a caption: the Ablate page shows the tokenizer's warnings once, by the target input
        st.caption("⚠ " + "; ".join(dict.fromkeys(warnings)))
    if r.notes:
        st.caption("Notes: " + "; ".join(r.notes))
    if r.masks:
        st.caption("Masked in every run: " + ", ".join(f"{mask_name(m)} ({m.level})" for m in r.masks))


def already_masked(r: AblationResult) -> list[str]:
    """"L.H" of each intervened head that is masked in both runs (the clean one too)."""
    masked = {(m.layer, m.head) for m in r.masks}
    return [f"{iv.layer}.{iv.head}" for iv in r.interventions
            if iv.site == "attn.head" and (iv.layer, iv.head) in masked]


def masked_text(heads: list[str], op: str) -> str:
    """Why an intervention on masked heads reads ~0, and how to measure it on the raw model."""
    which = ", ".join(heads)
    return (f"{'Head' if len(heads) == 1 else 'Heads'} {which} {'is' if len(heads) == 1 else 'are'} already masked "
            "in every run (quarantined, or a session mask), so the clean run has "
            f"{'it' if len(heads) == 1 else 'them'} switched off too"
            + (": zeroing changes nothing." if op == "zero" else f", and {op} is measured against the masked model.")
            + " To measure on the raw model, turn on **Use raw model (ignore quarantine)** in the sidebar "
              "(and remove session masks from **Heads to mask**); on the CLI, `--no-masks`.")


def show_ablation(r: AblationResult, prefix: str) -> None:
    _notes(r)
    masked = already_masked(r)
    if masked:
        st.warning(masked_text(masked, r.interventions[0].op))
    no_op = len(masked) == len(r.interventions)  # every change is 0 by construction: no green "+0.0000"
    cards = st.columns(5)
    for col, m in zip(cards, CARD_METRICS):
        if r.clean.value(m) is not None:
            col.metric(CARD_LABELS[m], f"{r.intervened.value(m):.4f}", delta=f"{r.delta(m):+.4f}", border=True,
                       delta_color="off" if no_op else "normal",
                       help=f"{METRIC_LABELS[m]}: clean {r.clean.value(m):.4f} → intervened {r.intervened.value(m):.4f}")
    cards[3].metric("KL (nats)", f"{r.kl_divergence:.4g}", border=True, help=METRIC_LABELS["kl"])
    cards[4].metric("Top-1", ui_trace.show_token(r.intervened.top_token), border=True, delta_color="off", delta_arrow="off",
                    delta="changed" if r.top1_changed else "unchanged",
                    help=f"clean top-1 {ui_trace.show_token(r.clean.top_token)} (p={r.clean.top_prob:.3f})")
    st.dataframe(metric_table(r), key=f"{prefix}_metrics", hide_index=True)
    prob = st.column_config.ProgressColumn("prob", min_value=0.0, max_value=1.0, format="%.3f")
    clean_col, iv_col = st.columns(2)
    clean_col.markdown("**Clean** next tokens")
    clean_col.dataframe(top_table(r.clean_top), key=f"{prefix}_clean_top", hide_index=True, column_config={"prob": prob})
    iv_col.markdown("**Intervened**: " + ", ".join(f"`{short_name(n)}` ({iv.op})" for n, iv in zip(r.names, r.interventions)),
                    help="Full names: " + ", ".join(r.names))
    iv_col.dataframe(top_table(r.intervened_top), key=f"{prefix}_intervened_top", hide_index=True,
                     column_config={"prob": prob})


def show_sweep(r: SweepResult, prefix: str) -> None:
    _notes(r)
    what = {"heads": "every head", "layers": "every layer: " + ", ".join(r.sites),
            "features": f"{len(r.features)} features of {r.sites[0]} (error term kept)"}[r.kind]
    st.caption(f"{r.op} over {what} · metric "
               f"{METRIC_LABELS[r.metric]}, clean {r.clean:.4f} · effect = intervened − clean · "
               f"{r.effects.size} interventions in {r.forward_passes} batched passes, {r.seconds:.1f} s")
    with st.container(key=f"{prefix}_heatmap_box"):
        st.altair_chart(feature_bars(r) if r.kind == "features" else sweep_heatmap(r), key=f"{prefix}_heatmap")
    st.markdown("**Largest effects**")
    st.dataframe(top_effects(r), key=f"{prefix}_top_effects", hide_index=True)


def show_promptsweep(r: PromptSetSweep, prefix: str) -> None:
    _notes(r)
    first = r.sweeps[0]
    what = {"heads": "every head", "layers": "every layer: " + ", ".join(first.sites),
            "features": f"{len(first.features)} features of {first.sites[0]} (error term kept)"}[r.kind]
    st.caption(f"{first.op} over {what} on each of {len(r.cases)} prompts · metric {METRIC_LABELS[r.metric]} · "
               "effect = mean over the prompts of intervened − clean · top1_changed = share of the prompts whose "
               "most likely next token changed")
    frame = mean_frame(r)
    with st.container(key=f"{prefix}_heatmap_box"):
        chart = feature_bars(first, frame) if r.kind == "features" else sweep_heatmap(first, frame)
        st.altair_chart(chart, key=f"{prefix}_heatmap")
    st.markdown("**Largest mean effects**")
    top = frame.drop(columns=["full name"])
    st.dataframe(top.loc[top["effect"].abs().sort_values(ascending=False).index[:10]].reset_index(drop=True),
                 key=f"{prefix}_top_effects", hide_index=True)
    st.markdown("**Each prompt**")
    st.dataframe(promptsweep_prompts(r), key=f"{prefix}_prompts", hide_index=True)


def show_promptset(r: PromptSetResult, prefix: str) -> None:
    _notes(r)
    mean, kl, changed = st.columns(3)
    mean.metric(f"Mean Δ {r.metric}", f"{r.mean_change:+.4f}", border=True, help="mean over prompts of intervened − clean")
    kl.metric("Mean KL (nats)", f"{r.mean_kl:.4g}", border=True)
    changed.metric("Top-1 changed", f"{r.top1_changed_fraction:.0%}", border=True,
                   help="share of prompts whose most likely next token changed")
    st.dataframe(promptset_frame(r), key=f"{prefix}_table", hide_index=True)


HISTORY_COLUMNS = ["created", "kind", "link", "result", "engine", "title", "model", "experiment"]  # the link
# before the long text columns, so it stays in view on a 1400 px window


def engine_label(engine: str, outdated: bool) -> str:
    """"this engine", or which older engine made a stored result ("" = before versions were kept)."""
    if not outdated:
        return "this engine"
    return f"older engine ({engine or 'before versions were kept'})"


def history_table(summaries) -> pd.DataFrame:
    """The History list: one row per stored experiment, newest first, with its share link; heads named "L.H"."""
    return pd.DataFrame([{"created": datetime.fromtimestamp(s.created), "kind": s.kind,
                          "link": share_url(s.hash, s.kind), "result": short_names(s.headline),
                          "engine": engine_label(s.engine, s.outdated), "title": short_names(s.title),
                          "model": s.model, "experiment": s.hash}
                         for s in summaries], columns=HISTORY_COLUMNS)
