"""A job on a page (ui/jobs.py): its progress bar and Cancel button, a cancelled run's notice with
nothing kept, a job that outlives the script run that started it, and the model-call queue in the
sidebar."""
import threading

from app_helpers import app
from streamlit.testing.v1 import AppTest

from synapse_core.model import queue as model_queue


def _page():
    import streamlit as st

    from synapse_core.jobs.config import JobCancelled
    from ui import jobs

    press = st.session_state.get("press_cancel")  # read here: the job's thread never calls into Streamlit

    def work(progress, cancel):
        for done in range(1, 5):
            progress(done, 4, f"prompt {done}")
            if done == 2 and press:
                cancel.__self__.set()  # the job's cancel flag (cancel is its is_set): what Cancel's on_click sets
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


def _left_going():
    import os
    import time
    from pathlib import Path

    import streamlit as st

    from ui import jobs

    gate = Path(os.environ["JOB_GATE"])  # the job waits until the test writes this file

    def work(progress, cancel):
        progress(1, 2, "waiting for the gate")
        for _ in range(300):
            if gate.exists():
                return "finished late"
            time.sleep(0.1)
        return "gave up"

    def keep(outcome):
        st.session_state["result"] = outcome

    st.session_state["going"] = jobs.running("demo")
    if st.button("Go", key="go"):
        jobs.start("demo", work, keep)
        st.stop()  # the script run ends with the job going, as when a click elsewhere stops it
    jobs.resume("demo")


def test_a_job_outlives_the_script_run_that_started_it(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    monkeypatch.setenv("JOB_GATE", str(gate))
    at = AppTest.from_function(_left_going).run()
    at.button(key="go").click().run()
    assert not at.exception and "result" not in at.session_state
    threading.Timer(0.5, gate.touch).start()  # the job ends while the next script run waits for it
    at.run(timeout=20)
    assert not at.exception and at.session_state["going"] and at.session_state["result"] == "finished late"
    at.run()
    assert not at.session_state["going"]  # shown once, then gone from the session


def test_the_sidebar_shows_the_model_queue(monkeypatch):
    monkeypatch.setenv("SYNAPSE_MODEL_SLOTS", "3")
    try:
        at = app()
        assert not at.exception
        line = next(m.value for m in at.sidebar.markdown if "Model queue" in m.value)
        assert line.startswith(":small[Model queue: 0 calls (0 running, 0 waiting; 3 at once,")
        assert model_queue.model_queue().slots == 3  # the app bounded the process-wide queue
        assert ":small[Long jobs run here (engine local)]" in [m.value for m in at.sidebar.markdown]
    finally:
        model_queue.reset()


def test_the_sidebar_says_where_long_jobs_run(monkeypatch):
    monkeypatch.setenv("SYNAPSE_ENGINE", "ray")
    monkeypatch.setenv("SYNAPSE_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("SYNAPSE_RAY_ACTORS", "4")
    try:
        at = app()
        lines = [m.value for m in at.sidebar.markdown]
        assert ":small[Long jobs run on Ray at ray://head:10001: 4 model actors, 1 CPU each]" in lines
        monkeypatch.setenv("SYNAPSE_ENGINE", "spark")
        at = app()
        assert any("engine 'spark' is not one of local, ray" in m.value for m in at.sidebar.markdown)
    finally:
        model_queue.reset()
