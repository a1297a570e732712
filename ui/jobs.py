"""Long jobs on a page, and the queue of model calls in the sidebar.

`run` starts a job (an experiment on the configured engine) in a thread of its own and waits for
it in this script run with a progress bar and a Cancel button. The job does not live in the script
run: a click elsewhere on the page (or a visit to another page) ends the script run, not the job, and
the next run of the page finds it in the session and waits again (`resume`) before showing its
result. Pressing Cancel sets the job's flag; the engine sees it at the job's next progress report
(between shards on Ray), stops with JobCancelled, stores nothing of the job and drops the Ray actors
of one it left running; the page says once that it was cancelled (`notice`). The job's thread never
calls into Streamlit: it writes its progress and result to its Job, which the script run reads.

`queue_sidebar` configures the process-wide model-call queue once (synapse_core/model/queue.py) and
shows its length (the forward passes running and waiting across every session of this server) and
where long jobs run (the configured engine).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from synapse_core.common.errors import SynapseError
from synapse_core.experiments import records as experiments
from synapse_core.jobs.config import JobCancelled
from synapse_core.model import queue as model_queue
from ui import core

JOBS = "jobs_running"  # session key: {job key: Job} of the jobs started in this session and not yet shown
POLL_S = 0.2  # how often a waiting script run redraws the progress (and may be stopped by a click)


@dataclass
class Job:
    """One job in its own thread. The thread writes progress, outcome and error; the script run reads them."""

    key: str
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    fraction: float = 0.0
    message: str = "starting"
    outcome: Any = None
    error: BaseException | None = None
    on_done: Callable[[Any], None] | None = None  # run in the script run that shows the outcome

    def progress(self, done: int, total: int, message: str) -> None:
        self.fraction, self.message = (min(done / total, 1.0) if total else 1.0), message

    def start(self, work) -> None:
        def body():
            try:
                self.outcome = work(self.progress, self.cancel.is_set)
            except BaseException as exc:  # noqa: BLE001 - handed to the script run, which shows or raises it
                self.error = exc
            finally:
                self.finished.set()

        threading.Thread(target=body, name=f"job {self.key}", daemon=True).start()


def _jobs() -> dict:
    return st.session_state.setdefault(JOBS, {})


def _cancelled(key: str, message: str) -> None:
    st.session_state[f"{key}_cancelled"] = message


def _press_cancel(job: Job) -> None:
    job.cancel.set()
    _cancelled(job.key, "The run was cancelled; nothing of it was stored.")


def running(key: str) -> bool:
    """Whether this session has a job `key` that has not been shown yet."""
    return key in _jobs()


def resume(key: str, show_error=None, earlier: bool = True):
    """Wait for this session's job `key` when one is left from an earlier script run (a click or another
    page stopped that run, not the job), then hand its outcome to its on_done; None when there is none.
    earlier: say that the run was started before (False for the script run that starts it)."""
    job = _jobs().get(key)
    if job is None:
        return None
    box = st.container()
    if earlier:
        box.caption("A run started earlier is still going: its result is shown here when it ends.")
    bar = box.progress(job.fraction, text=job.message)
    box.button("Cancel", key=f"{key}_cancel", on_click=_press_cancel, args=(job,))
    try:
        while not job.finished.wait(POLL_S):
            bar.progress(job.fraction, text=job.message)  # a call into Streamlit: a click stops this run here
    finally:
        box.empty()
    _jobs().pop(key, None)
    if isinstance(job.error, JobCancelled):
        _cancelled(key, f"The run was cancelled ({job.error}); nothing of it was stored.")
        notice(key)
        outcome = None
    elif isinstance(job.error, SynapseError):
        (show_error or core.show_error)(job.error)
        outcome = None
    elif job.error is not None:
        raise job.error
    else:
        outcome = job.outcome
    if job.on_done is not None:
        job.on_done(outcome)
    return outcome


def start(key: str, work, on_done: Callable[[Any], None] | None = None) -> Job:
    """Start work(progress, cancel) -> outcome in its own thread as this session's job `key` (one
    already going is kept, not started again); `resume` waits for it and shows its outcome."""
    job = _jobs().get(key)
    if job is None:
        st.session_state.pop(f"{key}_cancelled", None)
        job = _jobs()[key] = Job(key, on_done=on_done)
        job.start(work)
    return job


def run(key: str, work, show_error, on_done: Callable[[Any], None] | None = None):
    """Start work(progress, cancel) -> outcome and wait for it here with a progress bar and a Cancel
    button (key `<key>_cancel`). Returns the outcome; None when the job failed (show_error(exc)
    called) or was cancelled (the notice shown). on_done(outcome or None) runs in the script run that
    shows the outcome, this one or a later one (see the module docstring); work must not call into
    Streamlit. A job `key` already going is waited for instead of starting another."""
    earlier = running(key)
    start(key, work, on_done)
    return resume(key, show_error, earlier)


def run_experiment(key: str, handle, make_config, on_done: Callable[[Any], None] | None = None):
    """Build the config here and run it (or answer it from the store) as `run` does: prompt sets on the
    configured job engine. Returns the Experiment, or None when it failed or was cancelled."""
    store, engine = core.experiment_store(), core.job_engine()
    try:
        config = make_config()
    except SynapseError as exc:
        core.show_error(exc)
        if on_done is not None:
            on_done(None)
        return None

    def work(progress, cancel):
        return experiments.run_experiment(handle, config, store, progress=progress, engine=engine, cancel=cancel)

    return run(key, work, core.show_error, on_done)


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
    try:
        st.markdown(f":small[Long jobs run {engine_text(core.job_engine())}]")
    except SynapseError as exc:  # a bad SYNAPSE_ENGINE / [jobs] value: said here, and by every job it would run
        st.markdown(f":small[Long jobs: {exc}]")


def engine_text(engine) -> str:
    """Where the configured engine runs long jobs, in words for the sidebar."""
    if engine.engine == "local":
        return "here (engine local)"
    actors = engine.ray_actors or "one per GPU (else 2)"
    where = engine.ray_address or "a local cluster"
    return f"on Ray at {where}: {actors} model actors, {engine.cpus_per_actor:g} CPU each"
