"""Discover: the heads behind a token, ranked by attribution patching, proven by ablation, drawn as a circuit."""
import streamlit as st
from streamlit_agraph import agraph

from synapse_core.analysis.discovery import MIN_DRAWS, PAIR_RANGE, TOP_K_RANGE, discovery_config
from synapse_core.common.errors import SynapseError
from ui import core, jobs
from ui import cost as ucost
from ui import discover as ud

st.title("Discover")
st.caption("Name an output you do not want; every head is ranked by attribution patching (one forward and one "
           "backward pass; AtP* on request), the strongest are verified by real ablation, and the circuit is tested "
           "against random head sets (with a prompt set, on held-out prompts too). Effect = metric after ablation − "
           "before: negative means the head pushes toward the target.")
handle = core.require_model()
ud.set_defaults(st.session_state)
ud.open_link()  # a ?experiment= link: its result, and its inputs in the widgets below

mode = st.radio("Input", [ud.SINGLE, ud.PROMPT_SET], horizontal=True, key="discover_mode")
if mode == ud.SINGLE:
    prompt = st.text_area("Prompt", key="discover_prompt",
                          placeholder="When Mary and John went to the store, John gave a drink to")
    target_col, contrast_col = st.columns(2)
    target = target_col.text_input("Target token (the output to explain)", key="discover_target",
                                   placeholder="e.g. ' Mary' (a leading space is part of the token)")
    contrast = contrast_col.text_input("Contrast token (optional)", key="discover_contrast", placeholder="e.g. ' John'",
                                       help="With a contrast the metric is logit(target) − logit(contrast), "
                                            "else log p(target).")
else:
    lines = st.text_area("Prompt set: one `prompt | target | contrast` per line (contrast optional)",
                         key="discover_lines", help='Put a field in double quotes to keep its spaces: " Mary"',
                         placeholder='When Mary and John went to the store, John gave a drink to | " Mary" | " John"')
    upload = st.file_uploader("… or a CSV with columns prompt, target[, contrast]", type="csv", key="discover_csv")
k_col, pair_col = st.columns(2)
top_k = k_col.slider("Heads in the circuit (top_k_heads)", *TOP_K_RANGE, key="discover_top_k")
max_pairs = pair_col.slider("Pairs ablated together (max_pair_sweeps)", *PAIR_RANGE, key="discover_pairs")
with st.expander("Verification and random baseline"):
    verify_col, draws_col, seed_col = st.columns(3)
    verify = verify_col.number_input("Candidates verified by ablation", min_value=1,
                                     key="discover_verify", help="Spearman's rho is taken over the top 30 of them")
    draws = draws_col.number_input("Random head sets", min_value=MIN_DRAWS, key="discover_draws")
    seed = seed_col.number_input("Seed of the random sets", min_value=0, key="discover_seed")
    ranking = st.radio("Ranking before verification", list(ud.RANKING_LABELS), key="discover_ranking",
                       format_func=ud.RANKING_LABELS.get, horizontal=True)

if st.button("Run", key="discover_run_button", type="primary"):
    config = None
    try:
        cases = None if mode == ud.SINGLE else ud.cases(lines, upload)
        config = discovery_config(
            handle, **(dict(prompt=prompt, target=target, contrast=contrast) if cases is None else dict(cases=cases)),
            top_k_heads=int(top_k), max_pair_sweeps=int(max_pairs), masks=core.masks_in_force(handle),
            verify_heads=int(verify), baseline_draws=int(draws), seed=int(seed), ranking=ranking)
    except SynapseError as exc:
        core.show_error(exc)
    if config is None:
        ud.keep(None)
    else:
        jobs.run(ud.JOB, ud.work(handle, config), core.show_error, on_done=ud.keep)
jobs.resume(ud.JOB)  # a run a click or another page left going: waited for, then shown below
jobs.notice(ud.JOB)

run = st.session_state.get(core.LAST_DISCOVERY)
if not isinstance(run, ud.DiscoveryRun):
    st.info("Type a prompt and the target token, then press **Run** to discover the heads behind it.")
    st.stop()
result, circuit = run.result, run.result.circuit
if result.fingerprint != handle.fingerprint:
    st.info(f"The last discovery was made with {result.model}, not the loaded model: press **Run** again.")
    st.stop()

if run.outdated:
    st.warning(f"Made by an older engine ({run.outdated}): shown as stored · experiment `{run.key}`. "
               "Press **Run** for this engine's numbers.")
else:
    core.show_run_source(run.key, run.from_cache, "discover")
for message in (*result.warnings, *result.notes, *run.notes):
    st.warning(message)

st.subheader("Circuit vs random heads")
for judged, where in ud.judgements(result):
    (st.success if judged.beats_random else st.warning)(f"{judged.verdict[0].upper()}{judged.verdict[1:]}.  \n*{where}*")
if circuit.interacts:
    if result.pairs:
        st.markdown("**Pairs that explain it**: each pair ablated together against the sum of its single effects; "
                    "a joint effect far from that sum is where the heads undo each other.")
        st.dataframe(ud.pair_table(result, interacting_first=True), key="discover_interaction_table", hide_index=True)
    else:
        st.caption("No pairs were ablated: raise *Pairs ablated together* to see which heads undo each other.")
for col, card in zip(st.columns(4), ud.summary_cards(result)):
    col.metric(**card, delta_color="off", delta_arrow="off", border=True)
st.caption(f"{len(result.cases)} prompt(s) · ranking every head: {result.rank_seconds:.1f} s · "
           f"whole discovery: {result.seconds:.1f} s · {len(result.masks)} head(s) masked during the run")

st.subheader("Discovered heads")
st.dataframe(ud.head_table(result), key="discover_heads_table", hide_index=True)
with st.expander(f"All {len(result.candidates)} verified candidates"):
    st.dataframe(ud.head_table(result, result.candidates), key="discover_candidates_table", hide_index=True)
with st.container(key="discover_effect_chart_box"):
    st.altair_chart(ud.effect_bars(result), key="discover_effect_chart")
st.caption(f"Estimated: {result.method}. Verified: the head's output zero-ablated at every position."
           + (" Effects are means over the prompt set; std is their spread." if len(result.cases) > 1 else ""))

st.subheader("Circuit graph")
nodes, edges, config = ud.circuit_graph(result)
with st.container(key="discover_circuit_graph_box"):
    agraph(nodes=nodes, edges=edges, config=config)
st.caption(f"One column per layer; node size: |verified effect|. Edges: {result.edge_weight}.")
st.dataframe(ud.edge_table(result), key="discover_edges_table", hide_index=True)

st.subheader("The circuit on the layer × head grid")
with st.container(key="discover_grid_chart_box"):
    st.altair_chart(ud.overlay_heatmap(ud.grid_frame(result)), key="discover_grid_chart")
st.caption(f"Effect of every head: verified by ablation for the {len(result.candidates)} verified candidates, "
           "the attribution estimate elsewhere (red: pushes toward the target); the circuit's heads outlined.")

st.subheader("Pairs")
if result.pairs:
    st.dataframe(ud.pair_table(result), key="discover_pairs_table", hide_index=True)
    st.caption("Joint effect of two heads ablated together vs the sum of their single effects: redundant (joint "
               "weaker), synergistic (stronger) or additive.")
else:
    st.caption("No pairs were ablated (max_pair_sweeps 0, or a one-head circuit).")

st.subheader("Downloads")
json_col, csv_col = st.columns(2)
json_col.download_button("Discovery (JSON)", ud.result_json(result, run.key), file_name=f"discover-{run.key}.json",
                         mime="application/json", key="discover_download_json")
csv_col.download_button("Verified heads (CSV)", ud.candidates_csv(result), file_name=f"discover-{run.key}.csv",
                        mime="text/csv", key="discover_download_csv")

ucost.cheapest_section(handle, run, ud.QUARANTINE_HEADS)
st.subheader("Quarantine")
with st.container(border=True):
    chosen = st.multiselect("Heads to quarantine", [ud.short(h) for h in result.candidates], key=ud.QUARANTINE_HEADS,
                            default=[ud.short(h) for h in result.heads])
    ucost.expander(handle, "discover", chosen, "projection", result.cases[:1])
    wait = ucost.guard(handle, "discover", chosen, "projection")
    st.text_input("Reason", key=ud.QUARANTINE_REASON,
                  value=f"pushes the model toward {result.cases[0].target!r} (discovery {run.key})")
    st.button("Quarantine", key="discover_quarantine_button", type="primary", disabled=wait is not None, help=wait,
              on_click=ud.quarantine, args=(handle, run))
    if wait:
        st.info(wait)
    st.caption("Masks the heads' output (level projection, as the discovery ablated them) in every later run; "
               "recorded with this experiment as evidence, as " + (core.user_name() or "this machine's user (type "
               "your name under Governance in the sidebar)") + ". Manage it on the **Governance** page.")
    if ud.QUARANTINE_REPORT in st.session_state:
        kind, message = st.session_state.pop(ud.QUARANTINE_REPORT)
        getattr(st, kind)(message)
