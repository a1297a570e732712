"""Trace: generate from a prompt and see which heads were active, where they looked, and why."""
import streamlit as st
from streamlit_agraph import agraph

from synapse_core import Sampling
from synapse_core.common.errors import SynapseError
from ui import core
from ui import features as ui_features
from ui import lens as ui_lens
from ui import trace as ui_trace

st.title("Trace")
handle = core.require_model()

prompt = st.text_area("Prompt", key="trace_prompt", placeholder="The Eiffel Tower is in the city of")
st.session_state.setdefault("trace_max_new", 20)  # no value=: the guided demo sets it through session state
max_new = st.number_input("Max new tokens", min_value=1, max_value=256, key="trace_max_new")
with st.expander("Sampling (default: greedy)"):
    temperature = st.number_input("Temperature (0 = greedy)", min_value=0.0, max_value=5.0, value=0.0,
                                  step=0.1, key="trace_temperature")
    top_k = st.number_input("Top-k (0 = whole vocabulary)", min_value=0, value=0, key="trace_top_k")
    seed = st.number_input("Seed", min_value=0, value=0, key="trace_seed")

if st.button("Run", key="trace_run_button", type="primary"):
    bar, early = st.progress(0.0, text="starting"), st.empty()
    try:
        masks = core.masks_in_force(handle)
        sampling = Sampling(temperature=float(temperature), top_k=int(top_k), seed=int(seed))
        st.session_state[core.TRACE_RUN] = core.run_trace(
            handle, prompt, int(max_new), masks, sampling,
            progress=lambda done, total, message: bar.progress(min(done / total, 1.0), text=message),
            on_generated=lambda gen: early.code(gen.generated_text, language=None, wrap_lines=True),
        )
    except SynapseError as exc:
        st.session_state.pop(core.TRACE_RUN, None)
        core.show_error(exc)
    finally:
        bar.empty()
        early.empty()

core.open_shared_link("trace_opened_link", core.TRACE_RUN, core.open_trace)

run = st.session_state.get(core.TRACE_RUN)
if run is None:
    st.info("Type a prompt and press **Run** to trace the model.")
    st.stop()
result = run.result
if result.fingerprint != handle.fingerprint:
    st.info(f"The last trace was made with {result.model}, not the loaded model: press **Run** again.")
    st.stop()

core.show_run_source(run.key, run.from_cache, "trace")
for message in (*result.warnings, *run.notes):
    st.warning(message)

for col, card in zip(st.columns(4), ui_trace.summary_cards(handle, result)):
    col.metric(**card, border=True)
fid, path = result.fidelity, result.thought_path
if not fid.masks_verified:
    st.error(f"Masks that did not take effect: {', '.join(fid.unverified_masks)} (their output was not 0).")

st.subheader("Generated text")
st.code(result.generated_text, language=None, wrap_lines=True)
prob = st.column_config.ProgressColumn
st.dataframe(ui_trace.token_table(result), key="trace_tokens", column_config={
    ui_trace.SAMPLED_P: prob(ui_trace.SAMPLED_P, min_value=0.0, max_value=1.0, format="%.3f"),
    ui_trace.MODEL_P: prob(ui_trace.MODEL_P, min_value=0.0, max_value=1.0, format="%.3f")})
st.caption("p (sampled from): the token's probability under the distribution it was drawn from (temperature "
           f"{result.sampling.temperature:g}, top-k {result.sampling.top_k or 'off'}; greedy puts all of it on the "
           "argmax, so 1). p (model): under the model itself, temperature 1 over the whole vocabulary." +
           (" Generation stopped on an end-of-sequence token." if result.stopped_on_eos else ""))

outputs = list(range(len(result.generated_tokens)))
# no probability in these labels: a selectbox keeps its first labels across reruns of the same key
token_label = lambda i: f"{i}: {ui_trace.show_token(result.generated_tokens[i])}"

st.subheader("Head activity")
step = st.selectbox("Activity of", [None, *outputs], key="trace_activity_step",
                    format_func=lambda s: "mean over generated tokens" if s is None else f"token {token_label(s)}")
with st.container(key="trace_activity_chart_box"):  # st-key-* handle for browser tests
    st.altair_chart(ui_trace.activity_heatmap(ui_trace.activity_frame(result, step)), key="trace_activity_chart")
st.caption(f"Activity: {result.activity_method}. Masked heads read 0; they are outlined in orange.")

st.subheader("Attention of one head")
top = result.top_heads[0]
layer_col, head_col, out_col = st.columns(3)
layer = layer_col.selectbox("Layer", range(handle.arch.n_layers), index=top.layer, key="trace_attn_layer")
head = head_col.selectbox("Head", range(handle.arch.n_heads), index=top.head, key="trace_attn_head")
output = out_col.selectbox("Output token", outputs, format_func=token_label, key="trace_attn_output")
try:
    with st.spinner("Computing the attention pattern …"):
        matrix = core.head_attention(handle, result, output, layer, head)
    tokens = result.prompt_tokens + result.generated_tokens[:output]
    with st.container(key="trace_attention_chart_box"):
        st.altair_chart(ui_trace.attention_heatmap(matrix, tokens), key="trace_attention_chart", width="content")
    st.caption(f"Attention probabilities of head {layer}.{head}, recomputed in one forward pass over the prompt and the "
               f"tokens generated before {token_label(output)}, with the run's masks in force. The last row is the "
               "position that predicted that token (the trace records that row for every head).")
except SynapseError as exc:
    core.show_error(exc)

st.subheader("Thought path")
nodes, edges, config = ui_trace.path_graph(result)
with st.container(key="trace_path_graph_box"):
    agraph(nodes=nodes, edges=edges, config=config)
st.caption("The most active head of each layer, chained. Node size: activity; edge labels: composition score and "
           f"kind. Edges: {path.edge_method}.")
st.dataframe(ui_trace.path_table(result), key="trace_path_table", hide_index=True)

st.subheader("Token influence")
target = st.selectbox("Generated token to explain", outputs, format_func=token_label, key="trace_influence_output")
if st.button("Compute influence", key="trace_influence_button"):
    st.session_state[core.TRACE_INFLUENCE] = (run.key, target)
if st.session_state.get(core.TRACE_INFLUENCE) != (run.key, target):
    st.caption("Integrated gradients from the pad token's embedding: tens of forward and backward passes over the "
               "context (about a minute on a busy CPU), so it runs when you press **Compute influence**.")
else:
    try:
        with st.spinner("Integrating gradients along the path from the baseline …"):
            influence = core.influence(handle, result, target)
        with st.container(key="trace_influence_chart_box"):
            st.altair_chart(ui_trace.influence_bars(influence), key="trace_influence_chart")
        st.caption(f"Influence: {influence.method}. log p({ui_trace.show_token(influence.output_token)}) = "
                   f"{influence.log_prob:.3f}, at the baseline {influence.baseline_log_prob:.3f}; completeness "
                   f"error {influence.completeness_error:.2%} (the scores' sum against the change); "
                   f"{influence.passes} batched passes; masks of the run in force.")
    except SynapseError as exc:
        core.show_error(exc)

st.subheader("Logit lens")
ui_lens.trace_section(handle, result)

st.subheader("Features")
ui_features.trace_section(handle, result.prompt_ids + result.generated_ids)

st.subheader("Downloads")
json_col, heads_col, steps_col = st.columns(3)
json_col.download_button("Trace (JSON)", ui_trace.trace_json(result), file_name=f"trace-{run.key}.json",
                         mime="application/json", key="trace_download_json")
heads_col.download_button("Head activity (CSV)", ui_trace.head_activity_csv(result), file_name=f"heads-{run.key}.csv",
                          mime="text/csv", key="trace_download_heads")
steps_col.download_button("Activity per step (CSV)", ui_trace.step_activity_csv(result),
                          file_name=f"steps-{run.key}.csv", mime="text/csv", key="trace_download_steps")
