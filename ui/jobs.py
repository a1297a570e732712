"""Long jobs on a page, and the queue of model calls in the sidebar.

`run` runs a job (an experiment on the configured engine) in this script run with a progress bar and
a Cancel button. Pressing Cancel stops the job: Streamlit stops the script run at its next call into
Streamlit (the job's next progress report, or its next poll of `cancel`, every shard on Ray), the
exception leaves the engine, which stores nothing of a job that did not finish and drops the Ray
actors of one it left running; the next run shows that it was cancelled (`notice`). A job whose
engine sees the flag first (Ray polls it between shards) ends with JobCancelled, shown the same way.

`queue_sidebar` configures the process-wide model-call queue once (synapse_core/model/queue.py) and
shows its length: the forward passes running and waiting across every session of this server.
"""
from __future__ import annotations

import threading

import streamlit as st

from synapse_core.common.errors import SynapseError
from synapse_core.experiments import records as experiments
from synapse_core.jobs.config import JobCancelled
from synapse_core.model import queue as model_queue
from ui import core


def _flag(key: str) -> threading.Event:
    flags = st.session_state.setdefault("job_cancel_flags", {})
    return flags.setdefault(key, threading.Event())


def _cancelled(key: str, message: str) -> None:
    st.session_state[f"{key}_cancelled"] = message


def run(key: str, work, show_error):
    """work(progress, cancel) -> result, run here with a progress bar and a Cancel button (key
    `<key>_cancel`). Returns the result; None when the job failed (show_error(exc) called) or was
    cancelled (the notice shown)."""
    flag = _flag(key)
    flag.clear()
    st.session_state.pop(f"{key}_cancelled", None)
    box = st.container()
    bar = box.progress(0.0, text="starting")
    box.button("Cancel", key=f"{key}_cancel",
               on_click=lambda: (flag.set(), _cancelled(key, "The run was cancelled; nothing of it was stored.")))
    last = {"value": 0.0, "text": "starting"}

    def progress(done, total, message):
        last.update(value=min(done / total, 1.0) if total else 1.0, text=message)
        bar.progress(last["value"], text=last["text"])

    def cancel() -> bool:
        bar.progress(last["value"], text=last["text"])  # a call into Streamlit: a pressed Cancel stops the run here
        return flag.is_set()

    try:
        return work(progress, cancel)
    except JobCancelled as exc:
        _cancelled(key, f"The run was cancelled ({exc}); nothing of it was stored.")
        notice(key)
    except SynapseError as exc:
        show_error(exc)
    finally:
        box.empty()
    return None


def run_experiment(key: str, handle, make_config):
    """Build the config and run it (or answer it from the store) as `run` does: prompt sets on the
    configured job engine. Returns the Experiment, or None when it failed or was cancelled."""
    store, engine = core.experiment_store(), core.job_engine()

    def work(progress, cancel):
        return experiments.run_experiment(handle, make_config(), store, progress=progress, engine=engine,
                                          cancel=cancel)

    return run(key, work, core.show_error)


def notice(key: str) -> None:
    """Say once that the last run of `key` was cancelled."""
    message = st.session_state.pop(f"{key}_cancelled", None)
    if message:
        st.warning(message)


@st.cache_resource(show_spinner=False)
def model_calls() -> model_queue.ModelQueue:
    """The bounded queue of model calls, configured once a server (SYNAPSE_MODEL_SLOTS or the CPU count)."""
    return model_queue.configure()


def queue_sidebar() -> None:
    model_calls()
    queue = model_queue.model_queue()
    status = queue.status()
    st.markdown(f":small[Model queue: {status.length} call{'s' if status.length != 1 else ''} "
                f"({status.running} running, {status.waiting} waiting; {queue.slots} at once, "
                f"{queue.threads} torch threads each)]")
