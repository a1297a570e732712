"""The logit-lens heatmap: layer x position, coloured by the probability of one token read through the
final norm and the unembedding, with its rank and the top tokens in the tooltip. Used by the Graph page;
any page holding a LensResult can draw it."""
from __future__ import annotations

import altair as alt
import pandas as pd

from synapse_core.analysis.lens import LensResult


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
