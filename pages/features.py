"""Features: browse the sparse-autoencoder features of the loaded model, one SAE at a time."""
import streamlit as st
from streamlit_agraph import agraph

from synapse_core.common.errors import SynapseError
from ui import core, feature_link
from ui import feature_training as uf_train
from ui import features as uf

st.title("Features")
handle = core.require_model()
st.caption("Directions in the model's activations that a sparse autoencoder (Top-K, SAELens format) found on "
           "held-out text. Everything below is read from the statistics stored with the SAE; only shading every "
           "token of the top contexts runs the model.")
with st.expander("Train an SAE on this model", expanded=st.session_state.get(uf_train.TRAIN_JOB) is not None):
    uf_train.section(handle)
saes = {s.name: s for s in uf.saes() if s.d_in == handle.arch.d_model}
if not saes:
    st.info("No SAE for this model: run `make features`, or `synapse features train --site layers.L.resid.post`.")
    st.stop()
feature_link.open_link(saes)  # ?feature=layers.15.resid.post.sae.1234 opens that feature
name = st.selectbox("SAE", list(saes), key=uf.SAE_PICK,
                    format_func=lambda n: f"{n} · d_sae {saes[n].d_sae} · k {saes[n].k}")
info = saes[name]
cards = uf.quality_cards(info)
for col, card in zip(st.columns(len(cards)) if cards else [], cards):
    col.metric(**card, border=True)
if info.hook_name_out and not info.has_stats:
    st.info(f"{name} is a transcoder ({info.hook_name} → {info.hook_name_out}): attribution graphs put its features "
            f"in place of layer {info.layer}'s MLP (`synapse graph --transcoder {name}`); it has no feature statistics.")
    st.stop()
if not info.has_stats:
    st.info(f"{name} has no feature statistics yet: run `synapse features eval {name}`.")
    st.stop()

q_col, by_col, sort_col = st.columns([3, 1, 1])
query = q_col.text_input("Search", key=uf.QUERY, placeholder="a word in a label, or a token it fires on")
by = by_col.radio("Search by", ["label", "token"], key=uf.SEARCH_BY, horizontal=True)
sort = sort_col.radio("Sort by", ["density", "activation"], key=uf.SORT, horizontal=True)
try:
    table = feature_link.with_linked(uf.feature_table(info, query, by, sort, handle.tokenizer.decode), info)
except SynapseError as exc:
    core.show_error(exc)
    st.stop()
st.dataframe(table, key="features_table", hide_index=True, height=240)
if table.empty:
    st.info(f"No live feature of {name} matches {query!r}.")
    st.stop()
index = st.selectbox("Feature", list(table["feature"]), key=uf.FEATURE_PICK,
                     format_func=lambda i: f"{i} · {table.set_index('feature').loc[i, 'label']}")
try:
    f = uf.feature(info, int(index))
except SynapseError as exc:
    core.show_error(exc)
    st.stop()

st.subheader(f.name)
st.markdown(f"**{f.label}**" + (f" · labelled by {f.label_by} at {f.label_at}" if f.label_by else " · automatic"))
for col, card in zip(st.columns(3), ({"label": "density", "value": f"{f.density:.4%}"},
                                     {"label": "max activation", "value": f"{f.max_activation:.3f}"},
                                     {"label": "mean activation (when on)", "value": f"{f.mean_activation:.3f}"})):
    col.metric(**card, border=True)

st.markdown("**Top contexts** (the activating token outlined; hover a token for its activation)")
shade_all = st.toggle("Shade every token (re-runs these windows through the model and the SAE)",
                      key="features_shade_all")
with st.spinner("Re-running the top contexts …"):
    acts = uf.context_activations(handle, info, f) if shade_all else uf.stored_activations(f)
for c, known in zip(f.top_contexts, acts):
    st.html(f"<b>{c.activation:.3f}</b> " + uf.shaded_context(c.token_ids, c.token_index, handle.tokenizer.decode,
                                                           known, f.max_activation))

hist_col, co_col = st.columns(2)
hist_col.markdown("**Activation histogram** (tokens it is active on)")
hist_col.bar_chart(uf.histogram_frame(f), height=220)
co_col.markdown("**Co-occurring features** (Jaccard index of the tokens they fire on)")
co_col.dataframe(uf.cooccurring_frame(info, f), key="features_cooc", hide_index=True)
up_col, down_col = st.columns(2)
up_col.markdown("**Promoted tokens** (decoder direction through the final norm and unembedding)")
up_col.dataframe(uf.token_frame(f.promoted, handle.tokenizer.decode), key="features_promoted", hide_index=True)
down_col.markdown("**Suppressed tokens**")
down_col.dataframe(uf.token_frame(f.suppressed, handle.tokenizer.decode), key="features_suppressed", hide_index=True)

with st.form(key="features_label_form"):
    text = st.text_input("Your label for this feature", key=uf.LABEL_TEXT, placeholder=f.auto_label)
    saved = st.form_submit_button("Save label", key=uf.LABEL_SAVE)
if saved:
    who = core.user_name()
    if not who:
        st.error("Type your name in the sidebar first: a label is stored with who gave it.")
    else:
        try:
            uf.save_label(f, text, who)
            st.rerun()
        except SynapseError as exc:
            core.show_error(exc)
llm = uf.llm_config()  # None unless SYNAPSE_LLM_URL names an OpenAI-compatible endpoint
if llm is not None and st.button(f"Ask {llm.model} for a label", key="features_llm_label"):
    try:
        with st.spinner(f"Asking {llm.url} …"):
            uf.save_llm_label(f, handle.tokenizer.decode, llm)
        st.rerun()
    except SynapseError as exc:
        core.show_error(exc)

st.subheader("Graph of features")
size_col, kind_col, cos_col = st.columns(3)
size = size_col.number_input("Features (the table's first)", 2, 200, value=40, key=uf.GRAPH_SIZE)
kind = kind_col.radio("Edges", ["co-occurrence", "maximum spanning tree"], key=uf.GRAPH_KIND, horizontal=True)
cosine = cos_col.slider("Supernode: decoder cosine above", 0.3, 1.0, value=0.7, step=0.05, key=uf.GRAPH_COSINE)
try:
    g = uf.feature_graph(info, [int(i) for i in table["feature"][: int(size)]], cosine)
except SynapseError as exc:
    core.show_error(exc)
    st.stop()
names = dict(zip(table["feature"], table["label"]))
with st.container(key="features_graph_box"):
    agraph(*uf.graph_drawing(g, names, kind != "co-occurrence"))
st.caption(f"{len(g.nodes)} features, {len(g.edges)} co-occurring pairs (Jaccard of the tokens they fire on), "
           f"{len(g.supernodes)} supernodes (same colour: decoder directions with cosine above {cosine:.2f}).")
