"""Governance: quarantine heads proven harmful, keep the record of why, and govern it in OpenMetadata."""
import streamlit as st

from synapse_core.analysis.verify import verify
from synapse_core.arch.spec import MASK_LEVELS, parse_heads
from synapse_core.common.errors import BadInput, SynapseError
from ui import core, govtables
from ui import cost as ucost
from ui import feature_quarantine as ufq
from ui import trace as ui_trace

st.title("Governance")
handle = core.require_model()
try:
    gov = core.governance(handle)
except SynapseError as exc:  # e.g. an [openmetadata] host that is not a URL
    core.show_error(exc)
    st.stop()


def act(where, change, *reset):
    """Button callback: run one change before the rerun (so the sidebar shows its result) and keep its
    message, to be shown by the control that made it (`where`)."""
    try:
        report = change(core.governance(handle))
    except SynapseError as exc:
        st.session_state[core.GOV_REPORT] = ("error", str(exc), where)
    else:
        st.session_state[core.GOV_REPORT] = (*govtables.report_message(report), where)
        for key in reset:
            st.session_state[key] = False
    core.refresh_status()


def text(key: str) -> str | None:
    return (st.session_state.get(key) or "").strip() or None


def clear(g):
    if not st.session_state.get("gov_clear_confirm"):
        raise BadInput("tick the confirmation first: clearing releases every quarantined head")
    return g.clear()


try:
    status, masks, pending = core.governance_status(gov), gov.masks(), gov.pending()
    listed = [*masks, *ufq.entries(gov)]  # the mask table: heads, then features
except SynapseError as exc:  # a damaged mask list or outbox: say which file, never repair it silently
    core.show_error(exc)
    st.stop()
mode_col, version_col, masked_col, outbox_col = st.columns([3, 2, 2, 2])
mode_col.metric("Governed in", "OpenMetadata" if gov.config else "Embedded", border=True,
                help=gov.config.server if gov.config else "this machine's mask store; no server configured")
version_col.metric("Server version", status.server_version or "–", border=True,
                   help=f"SDK (openmetadata-ingestion) {status.client_version or 'not installed'}")
masked_col.metric("Quarantined heads", len(masks), border=True, help=f"and {len(listed) - len(masks)} SAE feature(s)")
outbox_col.metric("Outbox", len(pending), border=True, help="changes waiting to be sent to OpenMetadata")
if status.error:
    st.error(core.connection_text(status))
if gov.config and pending:
    last = next((i.last_error for i in pending if i.last_error), None)
    st.warning(f"The quarantine took effect locally; {len(pending)} change(s) wait in the outbox and will be sent "
               "on the next sync." + (f" Last attempt: {last}." if last else ""))
elif not gov.config:
    st.caption(status.message)
last_report = st.session_state.pop(core.GOV_REPORT, None)


def show_report(where: str) -> None:
    """The last change's message, under the button that made it (once)."""
    if last_report and last_report[2] == where:
        getattr(st, last_report[0])(last_report[1])


boot_col, sync_col = st.columns(2)
boot_col.button("Bootstrap the catalog", key="gov_bootstrap", disabled=not gov.config, on_click=act,
                args=("server", lambda g: g.bootstrap()),
                help="Create or update the model's tables, lineage and tag in OpenMetadata")
sync_col.button("Sync defects", key="gov_sync", disabled=not gov.config, on_click=act,
                args=("server", lambda g: g.sync()),
                help="Send the outbox, then make the local quarantine equal to the heads tagged DEFECTIVE")
show_report("server")

st.subheader("Quarantined heads")
try:
    audit, audit_error = gov.audit(), None
except SynapseError as exc:  # damaged lines in the audit log: reported, never skipped
    audit, audit_error = [], exc
table = govtables.mask_table(listed)
st.dataframe(table, key="gov_mask_table", hide_index=True, column_config={"experiment": govtables.experiment_column()})
csv_col, json_col = st.columns(2)
csv_col.download_button("Mask table (CSV)", govtables.mask_table(listed, links=False).to_csv(index=False),
                        file_name=f"quarantine-{handle.fingerprint}.csv", mime="text/csv", key="gov_download_masks_csv")
json_col.download_button("Mask table (JSON)", govtables.records_json(listed), file_name=f"quarantine-{handle.fingerprint}.json",
                         mime="application/json", key="gov_download_masks_json")
ufq.section(act, show_report)
if audit_error:
    core.show_error(audit_error)
with st.expander(f"Audit log, newest first ({len(audit)})"):
    st.dataframe(govtables.audit_table(audit), key="gov_audit_table", hide_index=True)
    csv_col, json_col = st.columns(2)
    csv_col.download_button("Audit log (CSV)", govtables.audit_table(audit).to_csv(index=False), mime="text/csv",
                            file_name=f"audit-{handle.fingerprint}.csv", key="gov_download_audit_csv")
    json_col.download_button("Audit log (JSON)", govtables.records_json(audit), mime="application/json",
                             file_name=f"audit-{handle.fingerprint}.json", key="gov_download_audit_json")

st.subheader("Change the quarantine")
ucost.settings_box()
named = core.user_name() is not None
if not named:
    st.info("Type your name under **Governance** in the sidebar: every change records who made it "
            "(marked unverified unless this host signs you in).")
with st.container(border=True, key="gov_top_box"):
    st.markdown("**Top head from the last discovery**")
    top = govtables.top_discovered(st.session_state.get(core.LAST_DISCOVERY))
    if top is None:
        st.info("No discovery has run yet in this session: run one on the **Discover** page, then come back.")
    else:
        st.markdown(f"`{top.head}` · {top.effect}" + (f" · {top.prompt!r} → {top.target!r}" if top.prompt else ""))
        st.text_input("Reason", value=f"top head of a discovery: {top.effect}", key="gov_top_reason")
        ucost.expander(handle, "gov_top", [top.head], "projection", ucost.typed_targets(top.prompt, top.target))
        top_wait = ucost.guard(handle, "gov_top", [top.head], "projection")
        st.button(f"Quarantine {top.head}", key="gov_top_button", disabled=not named or top_wait is not None,
                  help=top_wait, on_click=act, args=(
            "top", lambda g: g.quarantine([top.head], reason=text("gov_top_reason"), experiment=top.experiment,
                                          effect=top.effect, prompt=top.prompt, target=top.target,
                                          cost=ucost.evidence(handle, [top.head], "projection")),))
        show_report("top")
with st.container(border=True, key="gov_chosen_box"):
    st.markdown("**Chosen heads**")
    heads_col, level_col = st.columns([3, 1])
    heads_col.text_input("Heads", key="gov_heads", placeholder="e.g. 3.1, 5.2", help="LAYER.HEAD, comma-separated")
    level_col.selectbox("Level", MASK_LEVELS, key="gov_level")
    st.text_input("Reason", key="gov_reason", placeholder="why the head is harmful")
    with st.expander("Evidence (optional): experiment hash, prompt and the unwanted target token"):
        st.text_input("Experiment hash", key="gov_experiment")
        st.text_input("Prompt", key="gov_prompt")
        st.text_input("Target token", key="gov_target", placeholder="e.g. ' Paris'")
    chosen, level = text("gov_heads") or "", st.session_state["gov_level"]
    ucost.expander(handle, "gov", chosen, level, ucost.typed_targets(text("gov_prompt"), st.session_state.get("gov_target")))
    wait = ucost.guard(handle, "gov", chosen, level)
    st.button("Quarantine", key="gov_quarantine", type="primary", disabled=not named or wait is not None, help=wait,
              on_click=act, args=(
        "chosen", lambda g: g.quarantine(parse_heads(text("gov_heads") or ""), reason=text("gov_reason") or "",
                                         level=st.session_state["gov_level"], experiment=text("gov_experiment"),
                                         prompt=text("gov_prompt"), target=st.session_state.get("gov_target") or None,
                                         cost=ucost.evidence(handle, text("gov_heads") or "",
                                                             st.session_state["gov_level"])),))
    show_report("chosen")
with st.container(border=True, key="gov_release_box"):
    st.markdown("**Un-quarantine**")
    release = st.multiselect("Quarantined heads", [e.short for e in masks], key="gov_release_heads")
    st.button("Un-quarantine", key="gov_release", disabled=not (named and release), on_click=act,
              args=("release", lambda g: g.release(st.session_state["gov_release_heads"])))
    st.checkbox(f"Yes, release all {len(masks)} quarantined heads of {handle.name}", key="gov_clear_confirm")
    confirmed = bool(st.session_state.get("gov_clear_confirm"))
    st.button("Clear local masks", key="gov_clear", disabled=not (named and confirmed and masks), on_click=act,
              args=("release", clear, "gov_clear_confirm"))
    show_report("release")

st.subheader("Verify")
evidenced = [e for e in masks if e.prompt and e.target]
pick = st.selectbox("Evidence of", [*(e.short for e in evidenced), "typed"], key="gov_verify_pick",
                    format_func=lambda h: "a prompt typed here" if h == "typed" else f"quarantined head {h}")
entry = next((e for e in evidenced if e.short == pick), None)
if entry:
    prompt, target = entry.prompt, entry.target
    st.caption(f"Prompt {prompt!r}, target {target!r}, recorded with the quarantine of {entry.short}.")
else:
    prompt = st.text_input("Prompt", key="gov_verify_prompt", placeholder="The Eiffel Tower is in the city of")
    target = st.text_input("Target token", key="gov_verify_target", placeholder="' Paris'")
if st.button("Verify", key="gov_verify_button"):
    try:
        st.session_state[core.GOV_VERIFY] = verify(handle, prompt, target, [e.mask for e in masks])
    except SynapseError as exc:
        st.session_state.pop(core.GOV_VERIFY, None)
        core.show_error(exc)
check = st.session_state.get(core.GOV_VERIFY)
if check is not None:
    masked_col, raw_col = st.columns(2)
    token = ui_trace.show_token(check.target_token)
    masked_col.metric(f"p({token}) with the quarantine", f"{check.prob_masked:.4f}", border=True,
                      delta=f"{check.prob_masked - check.prob_raw:+.4f}", delta_color="inverse")
    raw_col.metric(f"p({token}) raw model", f"{check.prob_raw:.4f}", border=True)
    st.caption(f"Next token after {check.prompt!r}: {ui_trace.show_token(check.top_masked)} with the quarantine "
               f"({len(check.masks)} head(s)), {ui_trace.show_token(check.top_raw)} raw. "
               + ("The quarantine suppresses the target." if check.suppressed else "The quarantine does not lower it."))
    for warning in check.warnings:
        st.warning(warning)

with st.expander("Catalog: the model as OpenMetadata tables (Layer_N) and columns (Head_N)"):
    st.dataframe(govtables.catalog_table(gov.view()), key="gov_catalog", hide_index=True)
