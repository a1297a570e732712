"""The Streamlit side of Synapse, beside app.py and pages/.

core      every st.cache_resource / st.cache_data, the session-state keys, shared engine calls
trace     chart, table and download builders of the Trace page
ablate    tables, charts and renderers of the Ablate and History pages
discover  the Discover page's run, tables, charts and circuit graph
demo      the guided examples and their walkthrough

The engine (synapse_core) never imports streamlit; this package is the only bridge.
"""
