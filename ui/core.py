"""The UI's core: every st.cache_resource / st.cache_data, the session-state keys shared between the
sidebar and the pages, and the calls into the engine that pages share. Chart and table builders
live beside it, one module a page: ui/trace.py, ui/ablate.py, ui/discover.py.

The engine (synapse_core) never imports streamlit; this module is the only bridge.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

import synapse_core
from synapse_core.analysis.influence import InfluenceResult, token_influence
from synapse_core.analysis.patterns import attention_matrix
from synapse_core.analysis.trace import TraceResult
from synapse_core.arch.spec import (
    MASK_LEVELS,
    FeatureMask,
    HeadMask,
    feature_masks,
    head_masks,
    normalize_masks,
    parse_heads,
)
from synapse_core.common import settings
from synapse_core.common.errors import BadInput, StoreError, SynapseError
from synapse_core.experiments import records as _experiments
from synapse_core.experiments import traces as trace_store
from synapse_core.experiments.store import ResultStore
from synapse_core.experiments.traces import trace_experiment_config
from synapse_core.governance.featurestore import in_force
from synapse_core.governance.omconfig import OMConfig, config_from_secrets
from synapse_core.governance.service import Governance, GovernanceStatus

# Session-state keys shared across pages. Page-local widget keys live in their page.
MODEL_INPUT = "model_spec_input"  # sidebar text input: the spec the user typed
LOADED_SPEC = "loaded_model_spec"  # the spec this session's pages use (set after a successful load)
LOAD_ERROR = "model_load_error"  # message of the last failed load, shown once under the spec box
MASK_TEXT = "session_mask_heads"  # sidebar text input: heads to mask, "3.1, 5.2"
MASK_LEVEL = "session_mask_level"  # sidebar selectbox: projection | attention | both
TRACE_RUN = "trace_run"  # the TraceRun shown on the Trace page
TRACE_INFLUENCE = "trace_influence_asked"  # (run key, output index) whose token influence was asked for


@dataclass(frozen=True)
class TraceRun:
    """A trace as the Trace page shows it: the result and where it came from."""

    result: TraceResult
    key: str  # the result store's content hash of the request
    from_cache: bool
    notes: tuple[str, ...]  # store notes, e.g. an unreadable entry that was replaced


# ---------------------------------------------------------------- model
@st.cache_resource(show_spinner=False, max_entries=2)
def load_model(spec: str) -> synapse_core.ModelHandle:
    """One loaded model per spec, shared by every session (the engine is thread-safe)."""
    return synapse_core.load_model(spec)


def default_spec() -> str:
    return settings.default_model_spec()


def current_model() -> synapse_core.ModelHandle | None:
    """The model this session uses, or None when none was loaded (e.g. the page runs on its own)."""
    spec = st.session_state.get(LOADED_SPEC)
    return load_model(spec) if spec else None


def require_model() -> synapse_core.ModelHandle:
    """The session's model; without one, say how to get one and stop the page."""
    if LOADED_SPEC not in st.session_state:
        # app.py (which draws the sidebar) never ran in this session. Streamlit runs a page on its own
        # when a fresh server's first visitor opens it directly, because a folder named pages/ sits
        # beside app.py; a visit to the home page switches the server to app.py's st.navigation.
        st.info("No model is loaded: this page ran without Synapse's sidebar. "
                "[Open the home page](./) to load a model, then come back.")
        st.stop()
    handle = current_model()
    if handle is None:
        st.info("No model is loaded: pick one in the sidebar and press **Load**.")
        st.stop()
    return handle


def short_dtype(handle) -> str:
    return str(handle.dtype).removeprefix("torch.")


def model_status(handle) -> str:
    a = handle.arch
    return (
        f"**{handle.name}**  \nfamily `{a.family}` · {a.n_layers} layers × {a.n_heads} heads"
        f" ({a.n_kv_heads} kv) · d_head {a.d_head}  \n{handle.device.type} · {short_dtype(handle)}"
        f" · context {handle.max_context}  \nsource: {handle.source}  \nfingerprint `{handle.fingerprint}`"
    )


def session_masks(handle) -> tuple[HeadMask, ...]:
    """The heads this session masks, validated against the model; SynapseError when invalid."""
    level = st.session_state.get(MASK_LEVEL, MASK_LEVELS[0])
    heads = parse_heads(st.session_state.get(MASK_TEXT, ""))
    return normalize_masks([HeadMask(h.layer, h.head, level) for h in heads], handle.arch)


# ---------------------------------------------------------------- results
@st.cache_resource(show_spinner=False)
def result_store(path: str) -> ResultStore:
    return ResultStore(path)


def run_trace(handle, prompt, max_new_tokens, masks, sampling, progress, on_generated=None) -> TraceRun:
    """Trace through the result store: the same request twice is answered from disk. on_generated
    sees the generated tokens before the heads are read (the page shows them first)."""
    config = trace_experiment_config(handle, prompt, max_new_tokens, masks, sampling, capture_attention=True)
    exp = trace_store.run_trace(handle, config, result_store(str(settings.subdir("results"))), progress,
                                on_generated=on_generated)
    return TraceRun(exp.result, exp.hash, exp.from_cache, exp.notes)


def open_trace(key: str) -> TraceRun:
    """The stored trace of a `?experiment=` id; SynapseError when absent, unreadable or not a trace."""
    exp = trace_store.load_trace(result_store(str(settings.subdir("results"))), key)
    if exp is None:
        raise BadInput(f"no experiment {key} is stored here: it was deleted, or made on another machine")
    if "model_probs" not in vars(exp.result):  # stored before activity, fidelity and probabilities were redefined
        raise StoreError(f"trace {key} was made by an older Synapse whose numbers meant other things: run it again")
    return TraceRun(exp.result, exp.hash, True, ())


def show_run_source(key: str, from_cache: bool, page: str) -> None:
    """Where a result came from, with its experiment id and a share link that reopens it on `page`."""
    text = f"experiment `{key}` · [share link]({page}?experiment={key})"
    if from_cache:
        st.success(f"Answered from the store · {text}")
    else:
        st.caption(f"Computed and stored · {text}")


def open_shared_link(opened_key: str, run_key: str, reopen) -> None:
    """Show the result of a `?experiment=` link once per link (a later Run is not overwritten by it).

    opened_key: session key remembering the link already opened; run_key: where the page keeps its
    result; reopen(hash) returns the result or raises SynapseError, shown with st.error."""
    shared = st.query_params.get("experiment")
    if not shared or st.session_state.get(opened_key) == shared:
        return
    st.session_state[opened_key] = shared
    try:
        st.session_state[run_key] = reopen(shared)
    except SynapseError as exc:
        show_error(exc)


def model_key(handle) -> str:
    return f"{handle.fingerprint}|{handle.dtype}|{handle.device}"


@st.cache_data(show_spinner=False, max_entries=64)
def _attention(_handle, model_key: str, ids: tuple, layer: int, head: int, masks: tuple) -> np.ndarray:
    return attention_matrix(_handle, ids, layer, head, masks=[HeadMask(*m) for m in masks])


def head_attention(handle, result: TraceResult, output_index: int, layer: int, head: int) -> np.ndarray:
    """(q_pos, k_pos) attention of one head over the context of generated token `output_index`."""
    ids = tuple(result.prompt_ids) + tuple(result.generated_ids[:output_index])
    masks = tuple((m.layer, m.head, m.level) for m in result.masked_heads)
    return _attention(handle, model_key(handle), ids, layer, head, masks)


@st.cache_data(show_spinner=False, max_entries=64)
def _influence(_handle, model_key: str, prompt_ids: tuple, generated_ids: tuple, index: int, masks: tuple):
    return token_influence(_handle, prompt_ids, generated_ids, index, masks=[HeadMask(*m) for m in masks])


def influence(handle, result: TraceResult, output_index: int) -> InfluenceResult:
    masks = tuple((m.layer, m.head, m.level) for m in result.masked_heads)
    return _influence(handle, model_key(handle), result.prompt_ids, result.generated_ids, output_index, masks)


def show_error(exc: SynapseError) -> None:
    st.error(str(exc))


# ---------------------------------------------------------------- governance: the quarantine in force
# Every run applies the model's stored quarantine unless this session asked for the raw model; the
# sidebar shows what is in force and where the quarantine is governed (embedded or OpenMetadata).


USER_NAME = "governance_user_name"  # sidebar text input: who makes quarantine changes (recorded as `by`)
RAW_MODEL = "use_raw_model"  # sidebar toggle: ignore the stored quarantine (session masks still apply)
LAST_DISCOVERY = "last_discovery"  # the Discover page's last result; .heads ordered by verified effect
GOV_REPORT = "governance_report"  # (st function name, message, where) of the Governance page's last action
GOV_VERIFY = "governance_verify"  # the Verification the Governance page shows
STATUS_TTL_S = 30  # a server's "are you there?" answer is reused this long across reruns


def om_config() -> OMConfig | None:
    """The OpenMetadata server of .streamlit/secrets.toml or the environment; None: embedded mode.
    BadInput when one is configured wrongly (a host that is not a URL, no token)."""
    return config_from_secrets(st.secrets)


ALLOWED_MODELS = "SYNAPSE_ALLOWED_MODELS"  # secrets.toml key or environment variable: specs a visitor may load
UNVERIFIED = " (unverified)"  # appended to a typed author name: anyone can type any name


def _secret(key: str):
    try:
        return st.secrets.get(key)
    except Exception:  # st.secrets raises when no secrets.toml exists at all
        return None


def allowed_models() -> tuple[str, ...] | None:
    """The model specs a visitor may load on this host (secrets.toml's SYNAPSE_ALLOWED_MODELS, a list
    or comma-separated text, else the environment's); None: any spec (a machine of one's own)."""
    raw = _secret(ALLOWED_MODELS)
    if raw is None:
        raw = os.environ.get(ALLOWED_MODELS)
    if raw is None:
        return None
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    specs = tuple(str(s).strip() for s in items if str(s).strip())
    return specs or None


def check_model_allowed(spec: str) -> None:
    """BadInput when this host does not let a visitor load `spec` (no arbitrary hub model, no eviction)."""
    allowed = allowed_models()
    if allowed is not None and spec.strip() not in allowed:
        raise BadInput(f"model {spec!r} is not allowed on this host: choose one of {', '.join(allowed)} "
                       f"(set by {ALLOWED_MODELS})")


def signed_in_user() -> str | None:
    """The host's signed-in user (st.user, when the host provides sign-in), else None."""
    try:
        user = st.user
        if user.get("is_logged_in"):
            return str(user.get("email") or user.get("name") or "").strip() or None
    except Exception:  # no sign-in configured, or an older Streamlit without st.user
        return None
    return None


def user_name() -> str | None:
    """Who makes this session's changes: the signed-in user, else the typed name marked unverified."""
    signed = signed_in_user()
    if signed:
        return signed
    typed = (st.session_state.get(USER_NAME) or "").strip()
    return typed + UNVERIFIED if typed else None


def governance(handle) -> Governance:
    """The loaded model's quarantine, changes recorded as this session's user. Built per call, not
    cached: it opens no connection, and the user and the configuration may change between reruns."""
    return Governance(handle, om_config(), user=user_name())


@st.cache_data(ttl=STATUS_TTL_S, show_spinner=False)
def _status(server: str, fingerprint: str, _gov: Governance) -> GovernanceStatus:
    return _gov.status()


def governance_status(gov: Governance) -> GovernanceStatus:
    """Where the quarantine is governed; the server is asked at most once per STATUS_TTL_S, so read
    the counts from gov.masks() / gov.pending(), not from here."""
    if not gov.config:  # embedded: nothing to ask, and its message counts the heads
        return gov.status()
    return _status(gov.config.server, gov.identity.fingerprint, gov)


def refresh_status() -> None:
    """Ask the server again on the next rerun (after a change, a bootstrap or a sync)."""
    _status.clear()


def connection_text(status: GovernanceStatus) -> str:
    if status.mode == "embedded":
        return "Embedded: the quarantine lives in this machine's mask store."
    if status.connected:
        return f"OpenMetadata {status.server_version} at {status.server}"
    return status.error  # the client's message names the server and what to check


def quarantine_masks(handle) -> tuple[HeadMask | FeatureMask, ...]:
    """The model's stored quarantine (heads, then features), or () when this session asked for the raw model."""
    if st.session_state.get(RAW_MODEL):
        return ()
    return tuple(in_force(handle))


def masks_in_force(handle) -> tuple[HeadMask | FeatureMask, ...]:
    """What every run of this session applies: the stored quarantine of heads and features (unless the
    raw-model toggle is on) and the session masks. A head in both at different levels is masked at
    "both", so it counts once. SynapseError when a mask does not fit the model."""
    levels: dict[tuple[int, int], str] = {}
    quarantine = quarantine_masks(handle)
    for m in (*head_masks(quarantine), *session_masks(handle)):
        old = levels.get((m.layer, m.head))
        levels[(m.layer, m.head)] = m.level if old in (None, m.level) else "both"
    return normalize_masks([*(HeadMask(l, h, level) for (l, h), level in levels.items()),
                            *feature_masks(quarantine)], handle.arch)


def experiment_url(key: str | None) -> str | None:
    """A link that reopens a stored experiment, when the Ablate page reads `?experiment=`; else None."""
    page = Path(__file__).parents[1] / "pages" / "ablate.py"  # ui/ sits beside pages/
    if key and page.exists() and "query_params" in page.read_text():
        return f"ablate?experiment={key}"
    return None


# ---------------------------------------------------------------- ablate & history: experiments
# Ablations, sweeps and prompt sets run through the same ResultStore as traces: the same experiment
# twice is answered from disk, and the History page lists, reopens and deletes what is stored there.

ABLATE_RUN = "ablate_run"  # the single-prompt Experiment the Ablate page shows
ABLATE_SWEEP = "ablate_sweep"  # the sweep Experiment the Ablate page shows
ABLATE_PROMPTSET = "ablate_promptset"  # the prompt-set Experiment the Ablate page shows
ABLATE_PROMPTSWEEP = "ablate_promptsweep"  # the prompt-set sweep Experiment the Ablate page shows
HISTORY_CONFIRM = "history_confirm_delete"  # hash of the experiment the History page asks to confirm deleting
HISTORY_REPORT = "history_report"  # message of the History page's last delete, shown once


def experiment_store() -> ResultStore:
    return result_store(str(settings.subdir("results")))


def job_engine():
    """Where prompt-set jobs run: SYNAPSE_ENGINE / SYNAPSE_RAY_* or their keys in .streamlit/secrets.toml."""
    from synapse_core.jobs.config import engine_config

    return engine_config(secrets=st.secrets)


def run_experiment(handle, config, progress) -> _experiments.Experiment:
    """Run (or answer from the store) an ablation, sweep or prompt-set config; prompt sets on the
    configured job engine (the same experiment and numbers on each)."""
    return _experiments.run_experiment(handle, config, experiment_store(), progress=progress, engine=job_engine())


def open_experiment(key: str) -> _experiments.Experiment | None:
    """The stored experiment of a `?experiment=` id; None when absent, StoreError when unreadable."""
    return _experiments.load_experiment(experiment_store(), key)
