"""The logit-lens heatmap: layer x position, coloured by the probability of one token read through the
final norm and the unembedding, with its rank and the top tokens in the tooltip. The Graph page draws
the lens of its target; the Trace page's section lets the analyst pick the token.

The lens of a trace is one forward pass over the prompt, run when its section is drawn (after the
trace itself) and cached per prompt ids, token and masks, so the trace never waits for it."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from synapse_core.analysis.lens import LensResult, logit_lens
from synapse_core.analysis.trace import TraceResult
from synapse_core.arch.spec import HeadMask
from synapse_core.common.errors import SynapseError
from ui import core
from ui.trace import show_token

TRACE_TOKEN = "trace_lens_token"  # selectbox: which generated token the Trace page's lens follows
TRACE_OTHER = "trace_lens_other"  # text input: any other token (wins over the selectbox when filled)


def lens_frame(r: LensResult) -> pd.DataFrame:
    """One row per (row, position): p(token), its rank, the top tokens there."""
    rows = []
    for i, row in enumerate(r.rows):
        for p, tok in enumerate(r.prompt_tokens):
            top = ", ".join(f"{t!r} {q:.2f}" for t, q in zip(r.top_tokens[i][p], r.top_probs[i, p]))
            rows.append({"layer": row, "order": i, "position": f"{p} {tok!r}", "pos": p,
                         "p": float(r.probs[i, p]), "rank": int(r.ranks[i, p]), "top": top})
    return pd.DataFrame(rows)


def lens_heatmap(r: LensResult) -> alt.Chart:
    frame = lens_frame(r)
    order = list(reversed(r.rows))  # the last layer at the top, as the graph draws the output
    positions = [f"{p} {t!r}" for p, t in enumerate(r.prompt_tokens)]
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("position:N", sort=positions, title="position"),
        y=alt.Y("layer:N", sort=order, title="residual stream after layer"),
        color=alt.Color("p:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), title=f"p({r.token!r})"),
        tooltip=["layer", "position", alt.Tooltip("p:Q", format=".3f"), "rank", "top"],
    ).properties(height=max(300, 14 * len(r.rows)))


@st.cache_data(show_spinner=False, max_entries=32)
def _lens(_handle, model_key: str, ids: tuple, token: str | None, token_id: int | None, masks: tuple) -> LensResult:
    return logit_lens(_handle, ids, token, [HeadMask(*m) for m in masks], token_id=token_id)


def trace_lens(handle, result: TraceResult, token: str | None = None, output_index: int = 0) -> LensResult:
    """The lens over a trace's prompt, with the run's masks, for `token` (text) or else the
    generated token `output_index`."""
    masks = tuple((m.layer, m.head, m.level) for m in result.masked_heads)
    token_id = None if token else result.generated_ids[output_index]
    return _lens(handle, core.model_key(handle), tuple(result.prompt_ids), token or None, token_id, masks)


def trace_section(handle, result: TraceResult) -> None:
    """The Trace page's logit lens: pick a generated token (or type one), see p and rank per layer and position."""
    outputs = list(range(len(result.generated_tokens)))
    pick_col, other_col = st.columns(2)
    index = pick_col.selectbox("Token to follow", outputs, key=TRACE_TOKEN,
                               format_func=lambda i: f"{i}: {show_token(result.generated_tokens[i])}")
    other = other_col.text_input("Or any token", key=TRACE_OTHER, placeholder="e.g. ' London' (mind the space)")
    try:
        lens = trace_lens(handle, result, other, index or 0)
    except SynapseError as exc:
        core.show_error(exc)
        return
    for message in lens.warnings:
        st.warning(message)
    with st.container(key="trace_lens_box"):
        st.altair_chart(lens_heatmap(lens), key="trace_lens_chart")
    first = lens.first_top_row()
    st.caption(f"p({lens.token!r}) and its rank (0 = top) read from the residual stream at every layer and prompt "
               "position through the final norm and the unembedding, with the run's masks; hover a cell for the "
               "top tokens there. The top row is the model's own next-token distribution. At the last position "
               + (f"it is the top token from layer {first} on." if first else "it is never the top token."))
