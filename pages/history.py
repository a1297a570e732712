"""History: every stored experiment (traces, ablations, sweeps, prompt sets, discoveries), filtered by kind,
model and text; reopen one, export it, delete it. `?experiment=<hash>` opens one directly."""
import streamlit as st

from synapse_core.common.errors import SynapseError
from synapse_core.experiments.records import delete_experiment, list_experiments
from ui import ablate as ui_ablate
from ui import core

st.title("History")
store = core.experiment_store()
report = st.session_state.pop(core.HISTORY_REPORT, None)
if report:
    st.success(report)

kind_col, model_col, text_col = st.columns(3)
try:
    every, _ = list_experiments(store)
    kind = kind_col.selectbox("Kind", [None, *sorted({s.kind for s in every})], key="history_kind",
                              format_func=lambda k: "all kinds" if k is None else k)
    model = model_col.selectbox("Model", [None, *sorted({s.model for s in every})], key="history_model",
                                format_func=lambda m: "all models" if m is None else m)
    search = text_col.text_input("Search titles and prompts", key="history_search")
    shown, problems = list_experiments(store, kind, model, search.strip() or None)
except SynapseError as exc:
    core.show_error(exc)
    st.stop()
for problem in problems:  # listed, never hidden: the entry is skipped, the rest still shows
    st.warning(f"Skipped a stored entry: {problem}")

link = st.query_params.get("experiment")
if not shown and not link:
    st.info("No stored experiments match. Runs on the **Trace**, **Ablate** and **Discover** pages are stored here."
            if every else "No experiments yet: runs on the **Trace**, **Ablate** and **Discover** pages are stored here.")
    st.stop()
st.dataframe(ui_ablate.history_table(shown), key="history_table", hide_index=True, column_config={
    "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm:ss"),
    "link": st.column_config.LinkColumn("share link", display_text="open")})
st.caption(f"{len(shown)} of {len(every)} stored experiments, newest first.")

if link:
    st.subheader("Linked experiment")
    opened = link
    if st.button("Close the linked experiment", key="history_link_close"):
        del st.query_params["experiment"]
        st.rerun()
else:
    st.subheader("Reopen")
    titles = {s.hash: f"{s.title} · {s.hash}" for s in shown}
    opened = st.selectbox("Experiment", [None, *titles], key="history_open",
                          format_func=lambda h: "pick an experiment to reopen" if h is None else titles[h])
    if opened is None:
        st.stop()

try:
    exp = core.open_experiment(opened)
except SynapseError as exc:
    core.show_error(exc)
    st.stop()
if exp is None:
    st.error(f"No experiment {opened} is stored here: it was deleted, or made on another machine.")
    st.stop()

if st.session_state.get(core.HISTORY_CONFIRM) == exp.hash:
    st.warning(f"Delete experiment `{exp.hash}` ({exp.config.title})? This cannot be undone.")
    yes, no = st.columns(2)
    if yes.button("Yes, delete it", key="history_delete_yes", type="primary"):
        try:
            deleted = delete_experiment(store, exp.hash)
        except SynapseError as exc:
            core.show_error(exc)
            st.stop()
        st.session_state.pop(core.HISTORY_CONFIRM)
        st.session_state[core.HISTORY_REPORT] = (f"Deleted experiment {exp.hash}." if deleted
                                               else f"Experiment {exp.hash} was already gone.")
        if link == exp.hash:
            del st.query_params["experiment"]
        st.rerun()
    if no.button("Cancel", key="history_delete_no"):
        st.session_state.pop(core.HISTORY_CONFIRM)
        st.rerun()
elif st.button("Delete…", key="history_delete"):
    st.session_state[core.HISTORY_CONFIRM] = exp.hash
    st.rerun()

ui_ablate.show_experiment(exp, "history_open")
