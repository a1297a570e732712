"""Graph: how the next token was built, edge by edge, in the prompt's local replacement model."""
import streamlit as st
from streamlit_agraph import agraph

from synapse_core.common.errors import SynapseError
from synapse_core.experiments.graphs import graph_config
from synapse_core.graphs.adjacency import max_tokens
from synapse_core.graphs.graph import dump_json, edges_csv, nodes_csv, with_thresholds
from ui import core
from ui import graph as ug
from ui import lens as ul

st.title("Graph")
handle = core.require_model()
limit = max_tokens(handle.arch.n_layers, handle.arch.n_heads)
st.caption("The attribution graph of the next token: with every attention pattern, norm denominator and MLP gate "
           "frozen at its value on this prompt the model is linear, so each node's value (its total effect on the "
           "output) is exactly the sum of its incoming edges plus biases. A node's claim is checked by really "
           f"ablating it. Prompts up to {limit} tokens: the dense adjacency grows with the square of the nodes.")
prompt = st.text_area("Prompt", key="graph_prompt", placeholder="The capital of Australia is the city of")
target_col, contrast_col = st.columns(2)
target = target_col.text_input("Target token", key="graph_target", placeholder="e.g. ' Sydney' (mind the space)")
contrast = contrast_col.text_input("Contrast token (optional)", key="graph_contrast", placeholder="e.g. ' Canberra'",
                                   help="With a contrast the output is logit(target) − logit(contrast).")
choices = ug.transcoder_choices()
transcoders = st.multiselect("Transcoders (their features and error nodes replace a layer's MLP blocks)", choices,
                             key="graph_transcoders") if choices else []

if st.button("Build graph", key="graph_run_button", type="primary"):
    try:
        with st.spinner("Building the graph: one forward pass, batched backward passes, claims by ablation …"):
            config = graph_config(handle, prompt, target, contrast, core.masks_in_force(handle),
                                  transcoders=tuple(transcoders))
            st.session_state[ug.GRAPH_RUN] = ug.run(handle, config)
        st.session_state.pop(ug.NODE_PICK, None)
    except SynapseError as exc:
        st.session_state.pop(ug.GRAPH_RUN, None)
        core.show_error(exc)

core.open_shared_link(ug.OPENED_LINK, ug.GRAPH_RUN, ug.reopen)
current = st.session_state.get(ug.GRAPH_RUN)
if not isinstance(current, ug.GraphRun):
    st.info("Type a prompt and a target token, then press **Build graph**.")
    st.stop()
g = current.graph
if g.fingerprint != handle.fingerprint:
    st.info(f"The last graph was made with {g.model}, not the loaded model: press **Build graph** again.")
    st.stop()
core.show_run_source(current.key, current.from_cache, "graph")
for message in (*g.warnings, *current.notes):
    st.warning(message)
for col, card in zip(st.columns(4), ug.summary_cards(g)):
    col.metric(**card, border=True)

node_col, edge_col = st.columns(2)
node_t = node_col.slider("Node threshold (share of influence kept)", 0.05, float(round(g.pool_coverage, 2)),
                         value=min(0.8, float(round(g.pool_coverage, 2))), step=0.05, key="graph_node_threshold")
edge_t = edge_col.slider("Edge threshold", 0.5, 1.0, value=0.98, step=0.01, key="graph_edge_threshold")
shown = with_thresholds(g, node_t, edge_t)
st.caption(f"{len(shown.nodes)} of {g.n_nodes} nodes and {len(shown.edges)} of {g.n_edges} edges kept · "
           + " · ".join(f"{name} {s:.1f} s" for name, s in g.seconds))

nodes, edges, config = ug.drawing(shown)
with st.container(key="graph_drawing_box"):
    clicked = agraph(nodes=nodes, edges=edges, config=config)
st.caption("Positions left to right; token embeddings at the bottom, the output at the top, one row per layer's "
           "heads and one per its MLPs. Blue edges raise the output, red ones lower it.")
ids = [n.id for n in shown.nodes]
if clicked in ids:
    st.session_state[ug.NODE_PICK] = clicked
picked = st.selectbox("Node (or click one in the graph)", ids, key=ug.NODE_PICK,
                      format_func=lambda i: f"{i} · {shown.node(i).label}")
if picked:
    n = shown.node(picked)
    st.markdown(f"**{n.label}** ({n.kind}) · value **{n.value:+.4f}** (total effect on {g.output_label} in the "
                f"frozen model) · influence {n.influence:.3f}")
    if note := ug.feature_note(current, n):
        st.markdown(note)
    incoming, outgoing = ug.edge_lists(shown, picked)
    in_col, out_col = st.columns(2)
    in_col.dataframe(incoming, key="graph_node_in", hide_index=True)
    out_col.dataframe(outgoing, key="graph_node_out", hide_index=True)

st.subheader("Nodes by influence")
st.dataframe(ug.node_table(shown), key="graph_node_table", hide_index=True)

st.subheader("Claims checked by intervention")
claims = ug.claim_table(g)
st.dataframe(claims, key="graph_claims_table", hide_index=True)
off = int((claims["agree"] == "no").sum())
if off:
    st.warning(f"{off} of {len(claims)} claims disagree with the real model (sign, or over {ug.DISAGREE:g}x apart): the "
               "frozen model holds attention patterns, norms and MLP gates fixed, and the real model does not.")
st.caption("Claimed: minus the node's value, exact in the frozen model. Measured: the real model with the node's "
           "output zeroed at its position, output after − before.")

st.subheader("Supernodes")
st.dataframe(ug.supernode_table(shown), key="graph_supernode_table", hide_index=True)
with st.form("graph_supernode_form"):
    st.multiselect("Nodes to group", ids, key="graph_sn_nodes")
    st.multiselect("Supernodes to merge, split or rename", [s.name for s in shown.supernodes], key="graph_sn_pick")
    st.text_input("Name", key="graph_sn_name")
    cols = st.columns(4)
    for col, action in zip(cols, ("group", "merge", "split", "rename")):
        col.form_submit_button(action.capitalize(), on_click=ug.edit_supernodes, args=(action,))
st.caption("Groups start as nodes whose output directions have cosine above 0.7; the names are stored with the graph.")

st.subheader("Heads to Discover or quarantine")
with st.container(border=True):
    st.multiselect("Heads", ug.heads_in(shown), key="graph_quarantine_heads")
    st.text_input("Reason", key="graph_quarantine_reason", value=f"in the graph of {g.output_label} ({current.key})")
    quarantine_col, discover_col = st.columns(2)
    quarantine_col.button("Quarantine", key="graph_quarantine_button", on_click=ug.quarantine, args=(handle,))
    discover_col.button("Verify on Discover", key="graph_to_discover", on_click=ug.to_discover)
    st.caption("Masks the heads at the projection in every later run; verify them first on **Discover** with the "
               "same prompt and target, which ablates each head at every position.")
if ug.REPORT in st.session_state:
    kind, message = st.session_state.pop(ug.REPORT)
    getattr(st, kind)(message)

if current.lens is not None:
    st.subheader("Logit lens")
    with st.container(key="graph_lens_box"):
        st.altair_chart(ul.lens_heatmap(current.lens), key="graph_lens_chart")
    st.caption(f"p({current.lens.token!r}) read from the residual stream after each layer through the final norm and "
               f"the unembedding; first on top at the last position after layer {current.lens.first_top_row()}.")

st.subheader("Downloads")
a, b, c = st.columns(3)
a.download_button("Graph (circuit-tracer JSON)", dump_json(shown), file_name=f"graph-{current.key}.json",
                  mime="application/json", key="graph_download_json")
b.download_button("Nodes (CSV)", nodes_csv(shown), file_name=f"graph-{current.key}-nodes.csv", mime="text/csv",
                  key="graph_download_nodes")
c.download_button("Edges (CSV)", edges_csv(shown), file_name=f"graph-{current.key}-edges.csv", mime="text/csv",
                  key="graph_download_edges")
