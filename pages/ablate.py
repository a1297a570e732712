"""Ablate: switch components off and measure what changes. Placeholder until the engine's
ablation runner lands."""
import streamlit as st

st.title("Ablate")
st.info("Coming soon: ablation runs are not built yet.", icon="🚧")
st.markdown(
    "This page will switch chosen components off (one attention head, a whole attention block, an MLP "
    "block or the residual stream at a layer; by zeroing, mean-ablating or patching from another prompt) "
    "and show how the output changes: the generated text beside the unablated run, the change in the "
    "probability of a target token, and a sweep over every head ranked by its effect."
)
st.markdown("Until then, heads masked in the sidebar already apply to every run on the **Trace** page.")
