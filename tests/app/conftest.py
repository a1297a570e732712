"""Every app test starts with empty Streamlit caches. Results the engine's ResultStore keeps on disk
(under the session's SYNAPSE_HOME) are shared, so a request repeated in a later test is answered
from the store instead of being traced again; so are the loaded weights of each model spec (the
engine's load_model is memoised for the test process), so that a test pays for its page, not for a
model load."""
import pytest
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

_LOADED: dict = {}


@pytest.fixture(autouse=True)
def loaded_models_are_shared(monkeypatch):
    """synapse_core.load_model(spec), as the app's cached loader calls it, loads each spec once per test
    process; a load that fails is not remembered, so it fails again."""
    import synapse_core

    original = synapse_core.load_model

    def load_model(spec=None, *args, **kwargs):
        if args or kwargs:
            return original(spec, *args, **kwargs)
        if spec not in _LOADED:
            _LOADED[spec] = original(spec)
        return _LOADED[spec]

    monkeypatch.setattr(synapse_core, "load_model", load_model)


@pytest.fixture(autouse=True)
def clear_streamlit_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture(autouse=True)
def run_app_py_like_a_started_server(monkeypatch):
    """Make every AppTest run execute app.py and its st.navigation, as a running server does.

    A folder named pages/ beside app.py makes Streamlit start in its legacy multipage mode, which
    runs a page script on its own, without app.py's sidebar; the first st.navigation call switches
    a server out of that mode for good. AppTest re-derives the mode from the folder before every
    run, so without this a switch_page() run would never execute app.py.
    """
    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture(autouse=True)
def unbounded_model_queue_after():
    """The app bounds the process-wide model-call queue; later tests (threads racing on purpose) get
    the engine's unbounded one back."""
    yield
    from synapse_core.model import queue

    queue.reset()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random-init Llama with its word-level tokenizer, saved as a folder the sidebar can load."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from ablation_models import tiny_handle

    folder = tmp_path_factory.mktemp("tiny-llama")
    handle = tiny_handle("llama")
    handle.model.save_pretrained(folder)
    handle.tokenizer.save_pretrained(folder)
    return str(folder)
