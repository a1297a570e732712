"""Discover: find the circuit behind a behaviour. Placeholder until the engine's circuit search lands."""
import streamlit as st

st.title("Discover")
st.info("Coming soon: circuit discovery is not built yet.", icon="🚧")
st.markdown(
    "This page will take a prompt and the behaviour to explain (a target token, or a clean/corrupted prompt "
    "pair) and search for the smallest set of heads and blocks that carries it: it will score every "
    "component by its effect on the target, prune those that do not matter, and draw the remaining "
    "circuit with how much of the behaviour it keeps."
)
st.markdown("For now, the **Trace** page draws the thought path: the most active head of every layer, chained.")
