"""Synapse: look inside a language model. Entrypoint: `streamlit run app.py`."""
import streamlit as st

from synapse_core.arch.spec import MASK_LEVELS, mask_name
from synapse_core.common.errors import SynapseError
from ui import core, demo, jobs
from ui.model_load import loading_text

st.set_page_config(page_title="Synapse", page_icon="🧠", layout="wide")

PAGES = {
    "trace": st.Page("pages/trace.py", title="Trace", icon="🔎"),
    "ablate": st.Page("pages/ablate.py", title="Ablate", icon="✂️"),
    "discover": st.Page("pages/discover.py", title="Discover", icon="🧭"),
    "graph": st.Page("pages/graph.py", title="Graph", icon="🕸️"),
    "features": st.Page("pages/features.py", title="Features", icon="🧩"),
    "governance": st.Page("pages/governance.py", title="Governance", icon="🛡️"),
    "history": st.Page("pages/history.py", title="History", icon="🗂️"),
}


def home():
    st.title("Synapse")
    st.markdown(
        "Synapse lets you look inside a language model while it writes: which attention heads were "
        "active for each token, where they looked, and what changes when you switch heads off. "
        "Everything runs on the model picked in the sidebar, with its quarantined heads masked (unless you "
        "ask for the raw model there); head masks typed there apply to every page too."
    )
    st.page_link(PAGES["trace"], label="**Trace**: generate from a prompt and see which heads were active, "
                 "their attention, the path through the layers and which tokens drove each output.")
    st.page_link(PAGES["ablate"], label="**Ablate**: switch heads or blocks off and measure the effect.")
    st.page_link(PAGES["discover"], label="**Discover**: find the circuit of heads behind a behaviour.")
    st.page_link(PAGES["governance"], label="**Governance**: quarantine heads and keep a record of why.")

    st.subheader("Guided demo")
    st.caption("One click fills Trace, Discover and Ablate with a ready-made case on the bundled model.")
    for col, example in zip(st.columns(len(demo.EXAMPLES)), demo.EXAMPLES):
        col.button(example.title, key=f"demo_home_{example.key}", on_click=demo.fill,
                   args=(st.session_state, example.key), width="stretch", help=example.story)
    example = demo.loaded(st.session_state)
    if example is not None:
        st.success(f"Loaded **{example.title}**: {example.story} Open **Trace** and press **Run**.")
    st.markdown(demo.WALKTHROUGH)


RESET_MODEL_INPUT = "model_spec_reset"  # set after a failed Load: the spec box shows the model in use again


def try_load(spec: str) -> bool:
    """Load `spec` for this session; on failure keep the model in use and keep the reason to show once."""
    try:
        core.check_model_allowed(spec)
        with st.spinner(loading_text(spec)):
            core.load_model(spec)
    except SynapseError as exc:
        st.session_state[core.LOAD_ERROR] = f"could not load {spec!r}: {exc}"
        st.session_state.setdefault(core.LOADED_SPEC, None)
        return False
    st.session_state[core.LOADED_SPEC] = spec
    return True


def model_sidebar():
    st.header("Model")
    # the box's value comes from session state only (no value=): a widget default also set through
    # session state makes Streamlit log a warning, and the box is reset here after a failed load
    if core.MODEL_INPUT not in st.session_state or st.session_state.pop(RESET_MODEL_INPUT, False):
        st.session_state[core.MODEL_INPUT] = st.session_state.get(core.LOADED_SPEC) or core.default_spec()
    allowed = core.allowed_models()
    st.text_input("Model spec", key=core.MODEL_INPUT,
                  help=f"This host allows: {', '.join(allowed)}" if allowed else
                  "'bundled' (SmolLM2-135M-Instruct), a folder of safetensors weights, a .gguf file or a hub id")
    if st.button("Load", key="model_load", type="primary"):
        if not try_load(st.session_state[core.MODEL_INPUT].strip()):
            st.session_state[RESET_MODEL_INPUT] = True
            st.rerun()  # draw the box again with the model in use; the error shows below it, this once
    elif core.LOADED_SPEC not in st.session_state:  # a new session starts on the default model
        try_load(core.default_spec())
    error = st.session_state.pop(core.LOAD_ERROR, None)
    if error:
        st.error(error)
    handle = core.current_model()
    if handle is None:
        st.info("No model loaded.")
        return None
    st.markdown(core.model_status(handle))
    jobs.queue_sidebar()
    return handle


def demo_sidebar():
    st.header("Examples")
    for example in demo.EXAMPLES:
        st.button(example.title, key=f"demo_sidebar_{example.key}", on_click=demo.fill,
                  args=(st.session_state, example.key), width="stretch", help=example.story)
    example = demo.loaded(st.session_state)
    if example is not None:
        st.caption(f"Loaded: {example.title}. Each page is ready to Run.")


def mask_sidebar(handle):
    st.header("Session masks")
    st.text_input("Heads to mask", key=core.MASK_TEXT, placeholder="e.g. 3.1, 5.2",
                  help="LAYER.HEAD, comma-separated. Masked heads are switched off on every page in this session.")
    st.selectbox("Mask level", MASK_LEVELS, key=core.MASK_LEVEL,
                 help="projection: zero the head's output; attention: zero its attention probabilities; both")
    st.header("Masks in force")
    st.toggle("Use raw model (ignore quarantine)", key=core.RAW_MODEL,
              help="Runs in this session skip the model's stored quarantine; session masks still apply.")
    if handle is None:
        return
    try:
        quarantine, session = core.quarantine_masks(handle), core.session_masks(handle)
    except SynapseError as exc:
        core.show_error(exc)
        return
    lines = [f"{name}: " + ", ".join(f"`{mask_name(m)}` ({m.level})" for m in masks)
             for name, masks in (("quarantine", quarantine), ("session", session)) if masks]
    if lines:
        st.markdown("  \n".join(lines))
    else:
        st.caption("No heads masked.")
    if st.session_state.get(core.RAW_MODEL):
        st.caption("Raw model: the stored quarantine is not applied.")


def governance_sidebar(handle):
    st.header("Governance")
    signed = core.signed_in_user()
    if signed:
        st.caption(f"Signed in as **{signed}**: recorded as the author of your quarantine changes.")
    else:
        st.text_input("Your name", key=core.USER_NAME, placeholder="e.g. alice",
                      help="Recorded as the author of your quarantine changes, marked unverified: "
                           "anyone can type any name.")
    if handle is None:
        return
    try:
        status = core.governance_status(core.governance(handle))
    except SynapseError as exc:  # a wrongly configured server, e.g. a host that is not a URL
        core.show_error(exc)
        return
    if status.error:
        st.warning(core.connection_text(status))
    else:
        st.caption(core.connection_text(status))


demo.keep(st.session_state)  # page widgets keep their values while another page is shown
with st.sidebar:
    current = model_sidebar()
    mask_sidebar(current)
    governance_sidebar(current)
    demo_sidebar()

st.navigation([st.Page(home, title="Home", icon="🏠", default=True), *PAGES.values()]).run()
