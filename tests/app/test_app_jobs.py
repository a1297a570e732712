"""A job on a page (ui/jobs.py): its progress bar and Cancel button, a cancelled run's notice with
nothing kept, and the model-call queue in the sidebar."""
from app_helpers import app
from streamlit.testing.v1 import AppTest

from synapse_core.model import queue as model_queue


def _page():
    import streamlit as st

    from synapse_core.jobs.config import JobCancelled
    from ui import jobs

    def work(progress, cancel):
        for done in range(1, 5):
            progress(done, 4, f"prompt {done}")
            if done == 2 and st.session_state.get("press_cancel"):
                jobs._flag("demo").set()  # what the Cancel button's on_click does
            if cancel():
                raise JobCancelled(f"cancelled after {done} of 4")
        return "finished"

    if st.button("Go", key="go"):
        st.session_state["result"] = jobs.run("demo", work, lambda exc: st.error(str(exc)))
    jobs.notice("demo")


def test_a_job_runs_to_its_result_and_a_cancelled_one_keeps_nothing():
    at = AppTest.from_function(_page).run()
    at.button(key="go").click().run()
    assert not at.exception and at.session_state["result"] == "finished" and not at.warning
    at.session_state["press_cancel"] = True
    at.button(key="go").click().run()
    assert at.session_state["result"] is None
    assert [w.value for w in at.warning] == ["The run was cancelled (cancelled after 2 of 4); nothing of it was stored."]
    at.session_state["press_cancel"] = False
    at.run()  # the notice is shown once
    assert not at.warning


def test_the_sidebar_shows_the_model_queue(monkeypatch):
    monkeypatch.setenv("SYNAPSE_MODEL_SLOTS", "3")
    try:
        at = app()
        assert not at.exception
        line = next(m.value for m in at.sidebar.markdown if "Model queue" in m.value)
        assert line.startswith(":small[Model queue: 0 calls (0 running, 0 waiting; 3 at once,")
        assert model_queue.model_queue().slots == 3  # the app bounded the process-wide queue
    finally:
        model_queue.reset()
