"""The cost of a quarantine on the Discover and Governance pages: the "Cost of this quarantine"
expander (computed on demand, with progress, and a plain verdict), the Governance settings that may
require a report before a quarantine and a second confirmation above a perplexity increase, the
guard both pages' Quarantine buttons obey, and the trade-off chart of the cheapest sufficient set.
"""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from synapse_core.analysis.capabilities import default_capabilities
from synapse_core.analysis.cheapest import cheapest_set
from synapse_core.analysis.cost import cost_config
from synapse_core.analysis.perplexity import DEFAULT_TOKENS, DEFAULT_WINDOW, corpus_docs
from synapse_core.arch.spec import HeadMask, parse_heads
from synapse_core.common.errors import StoreError, SynapseError
from synapse_core.experiments import costs
from ui import core, jobs

REQUIRE = "cost_required"  # Governance setting: a quarantine needs a cost report of exactly its heads
MAX_INCREASE = "cost_max_perplexity_increase"  # Governance setting, percent: above it the button asks twice
DEFAULT_MAX_INCREASE = 5.0
REPORTS = "cost_reports"  # (fingerprint, heads, masks) -> the report's Experiment, measured in this session
TRADEOFF = "cost_tradeoff"  # (discovery hash, share) -> (CheapestSet, points) shown on Discover
TEXT_TOKENS = DEFAULT_TOKENS  # corpus tokens a report scores
TRADEOFF_TOKENS = 4096  # corpus tokens of each report on the trade-off chart (one report a point)


def capabilities():
    """The capability prompts a report scores (the shipped set)."""
    return default_capabilities()


@st.cache_resource(show_spinner=False)
def _corpus(_handle, fingerprint: str, tokens: int):
    try:
        return corpus_docs(_handle, tokens, DEFAULT_WINDOW), None
    except StoreError as exc:
        return None, f"General text skipped: {exc}"


def masks_for(heads, level: str) -> tuple[HeadMask, ...]:
    """HeadMasks of "L.H" strings (or a comma list) at `level`; BadInput on a bad name."""
    text = heads if isinstance(heads, str) else ", ".join(heads or ())
    return tuple(sorted(HeadMask(h.layer, h.head, level) for h in parse_heads(text)))


def _key(handle, masks) -> tuple:
    return handle.fingerprint, tuple(masks), core.masks_in_force(handle)


def known(handle, masks):
    """The report measured in this session for these masks against the masks now in force, or None."""
    return st.session_state.get(REPORTS, {}).get(_key(handle, masks)) if masks else None


def measure(handle, masks, targets, where: str):
    """Run (or answer from the store) the cost report of `masks` as a job of the page (ui/jobs.py:
    progress, Cancel, kept going through other clicks); kept for the guard and the evidence. Returns
    (the experiment or None, a note when the general text was skipped)."""
    text, skipped = _corpus(handle, handle.fingerprint, TEXT_TOKENS)
    config = cost_config(handle, masks, core.masks_in_force(handle), text, DEFAULT_WINDOW, capabilities(), targets)
    store, engine, key = core.experiment_store(), core.job_engine(), _key(handle, masks)

    def work(progress, cancel):
        def staged(stage, done, total):
            progress(done, total, f"{stage}: pass {done}/{total}")
        return costs.run_cost(handle, config, text, store, staged, engine=engine, cancel=cancel)

    def keep(exp):
        if exp is not None:
            st.session_state.setdefault(REPORTS, {})[key] = exp

    return jobs.run(_job(where), work, core.show_error, on_done=keep), skipped


def _job(where: str) -> str:
    return f"{where}_cost_job"


def expander(handle, where: str, heads, level: str, targets=()) -> None:
    """The "Cost of this quarantine" expander for the chosen heads; `where` prefixes widget keys."""
    try:
        masks = masks_for(heads, level)
    except SynapseError:
        masks = ()
    with st.expander("Cost of this quarantine", expanded=known(handle, masks) is not None or jobs.running(_job(where))):
        in_force = core.masks_in_force(handle)
        features = sum(m.level == "feature" for m in in_force)
        st.caption(f"Against the model as it runs now ({len(in_force) - features} head(s) and {features} feature(s) "
                   "masked): perplexity "
                   f"on {TEXT_TOKENS:,} tokens of held-out text and {len(capabilities())} capability prompts in "
                   "six groups, before and after, and the target behaviour.")
        if st.button("Measure the cost", key=f"{where}_cost_button", disabled=not masks):
            try:
                _, skipped = measure(handle, masks, tuple(targets), where)
                if skipped:
                    st.warning(skipped)
            except SynapseError as exc:
                core.show_error(exc)
        jobs.resume(_job(where))  # a report a click left going: waited for here
        jobs.notice(_job(where))
        exp = known(handle, masks)
        if exp is not None:
            show(exp, where)


def show(exp, where: str) -> None:
    r = exp.result
    (st.warning if r.flipped or (r.text and r.text.perplexity_change > 0.02) else st.success)(
        r.verdict()[0].upper() + r.verdict()[1:] + ".")
    cols = st.columns(3)
    if r.text is not None:
        cols[0].metric("Perplexity", f"{r.text.perplexity_after:.2f}", f"{r.text.perplexity_change:+.1%}",
                       delta_color="inverse", border=True,
                       help=f"exp(mean cross-entropy) on {r.text.tokens:,} tokens ({r.text.name}, windows of "
                            f"{r.text.window}); before {r.text.perplexity_before:.2f}")
    cols[1].metric("Capability prompts that change answer", f"{len(r.flipped)} of {r.capability_prompts}",
                   border=True)
    for t in r.targets[:1]:
        cols[2].metric(f"p({t.target!r})", f"{t.prob_after:.2f}", f"{t.prob_after - t.prob_before:+.2f}",
                       delta_color="inverse", border=True)
    st.dataframe(group_table(r), key=f"{where}_cost_groups", hide_index=True)
    if r.flipped:
        st.dataframe(pd.DataFrame([{"group": f.group, "prompt": f.prompt, "expected": f.expected,
                                    "before": f.before, "after": f.after, "KL": f.kl} for f in r.flipped]),
                     key=f"{where}_cost_flips", hide_index=True)
    st.caption(f"Report `{exp.hash}` ({'from the store' if exp.from_cache else f'{r.seconds:.1f} s'}); kept with the "
               "quarantine as evidence and listed in History." + "".join(f" {n}" for n in r.notes))


def group_table(r) -> pd.DataFrame:
    return pd.DataFrame([{"group": g.group, "prompts": g.prompts, "accuracy before": g.accuracy_before,
                          "accuracy after": g.accuracy_after, "top-1 agreement": g.agreement,
                          "mean KL": g.mean_kl, "worst KL": g.worst_kl, "flipped": len(g.flipped)}
                         for g in r.groups])


def settings_box() -> None:
    """Governance's cost settings; kept in session keys that survive pages where the widgets are absent."""
    with st.expander("Cost settings"):
        st.checkbox("Require a cost report before a quarantine", key="gov_cost_require",
                    value=bool(st.session_state.get(REQUIRE)), on_change=_copy, args=("gov_cost_require", REQUIRE))
        st.number_input("Maximum perplexity increase (%) before a second confirmation", min_value=0.0, step=0.5,
                        key="gov_cost_max", value=float(st.session_state.get(MAX_INCREASE, DEFAULT_MAX_INCREASE)),
                        on_change=_copy, args=("gov_cost_max", MAX_INCREASE))


def _copy(widget: str, key: str) -> None:
    st.session_state[key] = st.session_state[widget]


def guard(handle, where: str, heads, level: str) -> str | None:
    """Why the Quarantine button must wait, or None. Draws the second confirmation when one is needed."""
    try:
        masks = masks_for(heads, level)
    except SynapseError:
        return None  # the quarantine call itself names the bad head
    exp = known(handle, masks)
    if exp is None:
        return ("A cost report is required first (Governance setting): press **Measure the cost** above."
                if st.session_state.get(REQUIRE) and masks else None)
    limit = float(st.session_state.get(MAX_INCREASE, DEFAULT_MAX_INCREASE))
    text = exp.result.text
    if text is not None and text.perplexity_change * 100 > limit:
        ok = st.checkbox(f"Yes, quarantine although perplexity rises by {text.perplexity_change:+.1%} "
                         f"(more than the {limit:g}% allowed)", key=f"{where}_cost_confirm")
        return None if ok else "Tick the second confirmation: this quarantine raises perplexity above the limit."
    return None


def evidence(handle, heads, level: str) -> str | None:
    """The cost evidence a quarantine records: the report's hash and verdict, when one was measured."""
    try:
        exp = known(handle, masks_for(heads, level))
    except SynapseError:
        return None
    return costs.evidence(exp) if exp is not None else None


# ---- the cheapest sufficient set ---------------------------------------------------------------


def search(handle, run, share: float, bar):
    """Greedy search over the discovery's candidates, then one cost report per set on the path."""
    bar.progress(0.0, text="greedy search over the candidates")
    found = cheapest_set(handle, run.result, share)
    text, _ = _corpus(handle, handle.fingerprint, TRADEOFF_TOKENS)
    targets = tuple(run.result.cases[:1])
    points = costs.tradeoff(handle, found, core.masks_in_force(handle), text, DEFAULT_WINDOW, capabilities(),
                            targets, core.experiment_store(),
                            lambda d, n: bar.progress(d / n, text=f"cost of set {d}/{n}"))
    st.session_state[TRADEOFF] = (run.key, share, found, points)
    return found, points


def tradeoff_chart(points) -> alt.Chart:
    """Target effect (share of the circuit's) against perplexity increase; the Pareto front joined."""
    frame = pd.DataFrame([{"set": p.label, "heads": ", ".join(f"{h.layer}.{h.head}" for h in p.heads),
                           "share of the circuit's effect": p.share,
                           "perplexity increase": p.perplexity_change or 0.0, "flipped prompts": p.flipped,
                           "Pareto front": p.pareto} for p in points])
    base = alt.Chart(frame).encode(
        x=alt.X("perplexity increase:Q", axis=alt.Axis(format="+%")),
        y=alt.Y("share of the circuit's effect:Q", axis=alt.Axis(format="%")))
    dots = base.mark_circle(size=120).encode(
        color=alt.Color("Pareto front:N", scale=alt.Scale(domain=[True, False], range=["#1f3fbf", "#bbbbbb"])),
        tooltip=["set", "heads", alt.Tooltip("share of the circuit's effect:Q", format=".0%"),
                 alt.Tooltip("perplexity increase:Q", format="+.2%"), "flipped prompts"])
    front = base.transform_filter(alt.datum["Pareto front"]).mark_line(color="#1f3fbf")
    return (front + dots).properties(height=280)


def cheapest_section(handle, run, heads_key: str) -> None:
    """Discover's search for the cheapest sufficient set, its trade-off chart, and a button that makes
    a chosen point the heads to quarantine (`heads_key`, the page's multiselect)."""
    with st.expander("Cheapest sufficient quarantine"):
        st.caption("Greedy search with exact re-measurement: start from no heads, add the verified candidate whose "
                   "set (ablated together) lowers the metric most, stop at the first set reaching the chosen share "
                   "of the full circuit's effect. Each set on the path then gets a cost report (on "
                   f"{TRADEOFF_TOKENS:,} tokens of text, so the chart comes quickly).")
        share = st.slider("Share of the circuit's effect to reach", 0.1, 1.0, 0.8, 0.05, key="discover_cheapest_share")
        if st.button("Search", key="discover_cheapest_button"):
            bar = st.progress(0.0, text="searching")
            try:
                search(handle, run, float(share), bar)
            except SynapseError as exc:
                core.show_error(exc)
            finally:
                bar.empty()
        shown = st.session_state.get(TRADEOFF)
        if not shown or shown[0] != run.key:
            return
        _, asked, found, points = shown
        if found.chosen is None:
            st.warning(f"No set of the candidates reaches {asked:.0%} of the circuit's effect "
                       f"({found.circuit_effect:+.3f}).")
        else:
            st.success(f"{len(found.chosen)} head(s) reach {asked:.0%} of the circuit's effect: "
                       + ", ".join(f"{h.layer}.{h.head}" for h in found.chosen) + ".")
        with st.container(key="discover_tradeoff_box"):
            st.altair_chart(tradeoff_chart(points), key="discover_tradeoff_chart")
        labels = {f"{p.label}: {', '.join(f'{h.layer}.{h.head}' for h in p.heads)}": p for p in points}
        pick = st.selectbox("Point to quarantine", list(labels), key="discover_tradeoff_pick")
        heads = {label: [f"{h.layer}.{h.head}" for h in p.heads] for label, p in labels.items()}
        st.button("Use this set", key="discover_tradeoff_use", disabled=pick is None, on_click=_use,
                  args=(heads_key, heads))


def _use(heads_key: str, heads: dict) -> None:
    # read the pick when the button is pressed: a pick changed in the same rerun is not in the args yet
    st.session_state[heads_key] = heads[st.session_state["discover_tradeoff_pick"]]


def typed_targets(prompt: str | None, target: str | None) -> tuple:
    """The target behaviour typed as evidence on Governance, as the report's targets (none without both)."""
    from synapse_core.interventions.promptset import PromptCase

    return (PromptCase(prompt, target),) if prompt and prompt.strip() and target else ()


def known_reports(state) -> list:
    """Every report measured in this session (a session-state mapping), oldest first."""
    return list((state[REPORTS] if REPORTS in state else {}).values())  # noqa: SIM401 (AppTest state has no .get)
