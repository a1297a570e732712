"""Governance: quarantine heads and keep a record of why. Placeholder until the masks store lands."""
import streamlit as st

st.title("Governance")
st.info("Coming soon: the quarantine register is not built yet.", icon="🚧")
st.markdown(
    "This page will keep a shared, persistent register of quarantined heads: who masked which head, at "
    "which level and why, with the evidence (a trace or an ablation result) attached. Quarantined heads "
    "will be applied to every run of the model, and the register will be exportable to a data catalog."
)
st.markdown("Until then, heads typed under **Session masks** in the sidebar are masked for this session only.")
