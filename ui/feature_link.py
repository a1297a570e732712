"""Links that open the Features page on one feature, `features?feature=layers.15.resid.post.sae.1234`: the
Graph page links a transcoder feature node there, and the Features page reads the parameter once per link
(a later pick on the page is not overwritten by it)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from synapse_core.common.errors import BadInput, SynapseError
from synapse_core.features.catalog import parse_feature
from ui import core
from ui import features as uf

PARAM = "feature"  # the query parameter: a feature's full name
LINKED = "features_linked"  # the feature a ?feature= link opened; its row stays in the list the search shows


def feature_url(name: str) -> str:
    """The Features page opened on feature `name`; BadInput when `name` is not a feature name.

    >>> feature_url("layers.15.resid.post.sae.1234")
    'features?feature=layers.15.resid.post.sae.1234'
    """
    sae, index = parse_feature(name)
    return f"features?{PARAM}={sae}.{index}"


def graph_feature_name(transcoders, layer: int, feature: int) -> str | None:
    """The catalog name of a graph's feature node (its layer's transcoder plus the index), or None when that
    transcoder is a folder outside the catalog, which the Features page does not list.

    transcoders: the catalog entries (SAEInfo) the graph was built with."""
    for info in transcoders:
        if info.layer == layer:
            return f"{info.name}.{feature}"
    return None


def open_link(saes: dict) -> None:
    """Select the feature of a ?feature= link (saes: name -> SAEInfo the page offers); st.error names a
    bad link. Call it before the page's SAE and feature widgets are drawn."""
    name = st.query_params.get(PARAM)
    if not name or st.session_state.get(LINKED) == name:
        return
    st.session_state[LINKED] = name
    try:
        sae, index = parse_feature(name)
        if sae not in saes:
            raise BadInput(f"the link names {sae!r}, which is no SAE of this model; known: {', '.join(saes)}")
        if not 0 <= index < saes[sae].d_sae:
            raise BadInput(f"feature {index} does not exist: {sae} has features 0-{saes[sae].d_sae - 1}")
    except SynapseError as exc:
        st.session_state.pop(LINKED)
        core.show_error(exc)
        return
    st.session_state.update({uf.SAE_PICK: sae, uf.FEATURE_PICK: index})


def with_linked(table: pd.DataFrame, info) -> pd.DataFrame:
    """The feature table with the linked feature's row first when the search (top 100, live only) left it out."""
    name = st.session_state.get(LINKED)
    if not name:
        return table
    sae, index = parse_feature(name)
    if sae != info.name or index in set(table["feature"]):
        return table
    f = uf.feature(info, index)
    row = {"feature": index, "label": f.label, "density": f.density, "max activation": f.max_activation}
    return pd.concat([pd.DataFrame([row], columns=table.columns), table], ignore_index=True)
