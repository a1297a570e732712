"""The Features page's training section: train an SAE on one site of the loaded model, with the
harvest's and the trainer's progress, stopped by a button and resumed from its checkpoint.

The run is features.workflow.train_site in a background thread, so the page stays live and a
fragment redraws the progress every second. The job lives in the session (TRAIN_JOB); a process-wide
table refuses a second run of the same SAE while one is going, since both would write the same
harvest and checkpoint. Stopping asks the trainer to stop at its next step (or the harvest at its next
batch): the harvest and a checkpoint stay in $SYNAPSE_HOME/features-work, and starting the same
settings again resumes there.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from synapse_core.common.errors import BadInput, SynapseError
from synapse_core.features import workflow
from synapse_core.features.harvest import SITE_ORDER
from synapse_core.features.pipeline import sae_name
from synapse_core.features.train import TrainConfig
from synapse_core.jobs.engine import mapper
from ui import core

TRAIN_JOB = "features_train_job"  # session key: this session's TrainingJob
TRAIN_SHOWN = "features_train_shown"  # session key: the finished job the page was last redrawn for
_RUNNING: dict[str, "TrainingJob"] = {}  # SAE name -> the job training it, across sessions
_LOCK = threading.Lock()


@dataclass
class TrainingJob:
    """One training run in a background thread; its fields are written by that thread only."""

    name: str  # the SAE's name, e.g. layers.4.resid.post.sae
    stop: threading.Event = field(default_factory=threading.Event)
    stage: str = "starting"  # harvest | train
    done: int = 0
    total: int = 1
    finished: bool = False
    folder: Path | None = None  # the SAE folder, once trained
    stopped: bool = False  # stopped before the end: started again, it resumes
    error: str | None = None
    tokens_per_s: float = 0.0

    def progress(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, done, max(total, 1)

    @property
    def text(self) -> str:
        unit = "contexts harvested" if self.stage == "harvest" else "training steps"
        return f"{self.name}: {self.stage} · {self.done}/{self.total} {unit}"


def start(handle, site: str, k: int, d_sae: int, tokens: int, contexts: int, ctx_len: int = 128) -> TrainingJob:
    """Check the settings, then train in a background thread; BadInput names a bad value."""
    s, _ = workflow.site_pair(handle, site)
    if not 1 <= k <= d_sae:
        raise BadInput(f"k = {k} must be between 1 and d_sae = {d_sae}")
    rows = contexts * (ctx_len - 1)  # position 0, the separator, is not trained on
    tcfg = TrainConfig(d_sae=d_sae, k=k, n_tokens=tokens, batch_size=min(1024, rows),
                       scale_tokens=min(20_000, rows))
    run = workflow.RunConfig(contexts=contexts, ctx_len=ctx_len)
    each = mapper(handle, core.job_engine())  # the harvest on the configured job engine (here, or Ray actors)
    job = TrainingJob(sae_name(s.name))
    with _LOCK:
        if job.name in _RUNNING:
            raise BadInput(f"{job.name} is being trained already (in this or another session): wait, or stop it there")
        _RUNNING[job.name] = job

    def work():
        try:
            folder, res = workflow.train_site(handle, s.name, tcfg, run, progress=job.progress,
                                              should_stop=job.stop.is_set, mapper=each)
            job.folder, job.stopped = folder, folder is None
            job.tokens_per_s = res.tokens_per_s if res is not None else 0.0
        except SynapseError as exc:
            job.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - shown on the page with its type, not swallowed
            job.error = f"training failed: {type(exc).__name__}: {exc}"
        finally:
            with _LOCK:
                _RUNNING.pop(job.name, None)
            job.finished = True

    threading.Thread(target=work, name=f"train {job.name}", daemon=True).start()
    return job


def section(handle) -> None:
    """Widgets, the start and stop buttons, and the job's progress (redrawn every second while it runs)."""
    job: TrainingJob | None = st.session_state.get(TRAIN_JOB)
    running = job is not None and not job.finished
    layer_col, site_col, k_col, d_col, tok_col, ctx_col = st.columns(6)
    layer = layer_col.number_input("Layer", 0, handle.arch.n_layers - 1, value=handle.arch.n_layers // 2,
                                   key="features_train_layer")
    site = site_col.selectbox("Site", SITE_ORDER, index=SITE_ORDER.index("resid.post"), key="features_train_site")
    k = k_col.number_input("k (latents per token)", 1, 4096, value=32, key="features_train_k")
    d_sae = d_col.number_input("d_sae (latents)", 1, 65536, value=8 * handle.arch.d_model, key="features_train_d_sae")
    tokens = tok_col.number_input("Training tokens", 1, 100_000_000, value=2_000_000, step=100_000,
                                  key="features_train_tokens")
    contexts = ctx_col.number_input("Contexts harvested (128 tokens)", 1, 100_000, value=1000,
                                    key="features_train_contexts")
    start_col, stop_col = st.columns(2)
    if start_col.button("Train (resumes a stopped run of the same settings)", key="features_train_start",
                        disabled=running):
        try:
            st.session_state[TRAIN_JOB] = start(handle, f"layers.{int(layer)}.{site}", int(k), int(d_sae),
                                                int(tokens), int(contexts))
            running = True
        except SynapseError as exc:
            core.show_error(exc)
    if stop_col.button("Stop", key="features_train_stop", disabled=not running):
        st.session_state[TRAIN_JOB].stop.set()
    st.fragment(_progress, run_every=1.0 if running else None)()


def _progress() -> None:
    job: TrainingJob | None = st.session_state.get(TRAIN_JOB)
    if job is None:
        return
    if not job.finished:
        st.progress(min(job.done / job.total, 1.0), text=job.text)
        if job.stop.is_set():
            st.caption("Stopping at the next step …")
        return
    if job.error:
        st.error(job.error)
    elif job.stopped:
        st.info(f"{job.name} stopped at {job.stage} {job.done}/{job.total}: press Train with the same settings to "
                "resume from its harvest and checkpoint.")
    else:
        st.progress(1.0, text=job.text)
        st.success(f"Trained {job.name} ({job.tokens_per_s:,.0f} tokens/s) in {job.folder}; it is listed below. "
                   f"Its quality and feature statistics: `synapse features eval {job.name}`.")
    if st.session_state.get(TRAIN_SHOWN) is not job:  # once: redraw the whole page so the SAE list has it
        st.session_state[TRAIN_SHOWN] = job
        st.rerun(scope="app")
