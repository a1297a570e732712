"""The Governance page's feature quarantine: the quarantined features listed with the heads, and a form that
quarantines or lifts features by name. A quarantined feature is zero-ablated at its SAE's site in every
later run (error term kept); in OpenMetadata it is a DEFECTIVE column of its layer's table."""
from __future__ import annotations

import streamlit as st

from synapse_core.governance.featuregov import quarantine_features, release_features
from synapse_core.governance.featurestore import FeatureEntry, FeatureQuarantine

NAMES = "gov_feature_names"  # text input: features, comma or space separated
REASON = "gov_feature_reason"  # text input: why
QUARANTINE = "gov_feature_quarantine"  # button
LIFT = "gov_feature_lift"  # button
WHERE = "features"  # where the page shows this form's last report


def entries(gov) -> list[FeatureEntry]:
    """The model's quarantined features (StoreError names a damaged list)."""
    return FeatureQuarantine(gov.store).list(gov.identity)


def _names() -> list[str]:
    return (st.session_state.get(NAMES) or "").replace(",", " ").split()


def section(act, show_report) -> None:
    """The form; act(where, change) runs a change in a button callback (the page's), show_report(where) its message."""
    with st.container(border=True):
        st.text_input("Features", key=NAMES, placeholder="layers.15.resid.post.sae.1234, …",
                      help="SAE features by name, as the Features page and `synapse features list` write them")
        st.text_input("Reason", key=REASON, placeholder="why the feature is harmful (kept with the quarantine)")
        quarantine_col, lift_col = st.columns(2)
        quarantine_col.button("Quarantine features", key=QUARANTINE, on_click=act, args=(WHERE, lambda g: quarantine_features(
            g, _names(), (st.session_state.get(REASON) or "").strip())))
        lift_col.button("Lift features", key=LIFT, on_click=act, args=(WHERE, lambda g: release_features(g, _names())))
        st.caption("Every later run subtracts a quarantined feature's part of its SAE's site (the SAE's error term "
                   "kept). Attribution graphs refuse to run while a feature is quarantined (its SAE is not linear in "
                   "the stream); lift it or switch on the raw model.")
        show_report(WHERE)
