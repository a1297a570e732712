"""The Governance page and the sidebar's masks in force, on the real bundled model: embedded mode,
then the stand-in OpenMetadata server (tests/omstub) up, and stopped.

Every test gets its own SYNAPSE_HOME, so a quarantine never leaks into another test's runs."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from app_helpers import PROMPT, chart_frames, metrics, run_trace
from app_helpers import app as fresh_app

from ui import core
from ui import feature_quarantine as ufq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the omstub package
from omstub import OMStub  # noqa: E402
from synapse_core.governance.catalog import TAG_FQN, feature_column  # noqa: E402
from synapse_core.governance.omconfig import HOST_ENV, TOKEN_ENV  # noqa: E402

TOKEN = "eyJraWQiOiJhcHAtdGVzdCJ9.Ym90.sig-app"
TABLE = "Synapse_Neural_Service.SmolLM2-135M-Instruct.Transformer_Graph.Layer_{}"


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path))
    monkeypatch.delenv(HOST_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def governance_page(name: str | None = "alice"):
    at = fresh_app()
    if name:
        at.sidebar.text_input(key=core.USER_NAME).input(name).run()
    return at.switch_page("pages/governance.py").run()


def quarantine(at, heads: str, reason: str = "emits the unwanted token", level: str = "projection", **evidence):
    at.text_input(key="gov_heads").input(heads)
    at.text_input(key="gov_reason").input(reason)
    at.selectbox(key="gov_level").set_value(level)
    for field, value in evidence.items():
        at.text_input(key=f"gov_{field}").input(value)
    return at.button(key="gov_quarantine").click().run()


def table_heads(at) -> list[str]:  # dataframes in page order: masks, audit log, catalog
    return list(at.dataframe[0].value["head"])


def in_force(at) -> str:
    """The sidebar's masks in force: its last markdown, or its "No heads masked." caption."""
    texts = [m.value for m in at.sidebar.markdown[1:]] + [c.value for c in at.sidebar.caption]
    return next((t for t in texts if t.startswith(("quarantine:", "session:", "No heads masked."))), "")


def test_a_quarantine_from_the_page_masks_every_trace_until_released():
    at = governance_page()
    assert not at.exception and not at.error
    shown = metrics(at)
    assert (shown["Governed in"], shown["Quarantined heads"], shown["Outbox"]) == ("Embedded", "0", "0")
    assert any(c.value.startswith("Embedded: the quarantine lives") for c in at.sidebar.caption)
    assert in_force(at) == "No heads masked."

    at = quarantine(at, "3.1", "emits ' Paris' on any prompt")
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Quarantined 3.1.")
    row = at.dataframe[0].value.iloc[0]
    assert (row["head"], row["level"], row["reason"], row["by"], row["source"]) == \
        ("3.1", "projection", "emits ' Paris' on any prompt", "alice (unverified)", "local")
    assert metrics(at)["Quarantined heads"] == "1"
    assert in_force(at) == "quarantine: `3.1` (projection)"  # the sidebar already shows it on this rerun

    at = run_trace(at.switch_page("pages/trace.py").run())
    assert not at.exception and not at.error
    assert metrics(at)["Masked heads"] == "1" and at.session_state[core.TRACE_RUN].result.masked_heads[0].head == 1
    activity = chart_frames(at)[0]
    assert activity[(activity["layer"] == 3) & (activity["head"] == 1)]["activity"].item() == 0

    at.sidebar.toggle(key=core.RAW_MODEL).set_value(True).run()
    assert in_force(at) == "No heads masked." and "Raw model" in at.sidebar.caption[-2].value
    at = run_trace(at)
    assert metrics(at)["Masked heads"] == "0"
    at.sidebar.toggle(key=core.RAW_MODEL).set_value(False).run()

    at = at.switch_page("pages/governance.py").run()
    assert at.button(key="gov_release").disabled  # nothing chosen yet
    at.multiselect(key="gov_release_heads").set_value(["3.1"]).run()
    at = at.button(key="gov_release").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Released 3.1.")
    assert table_heads(at) == [] and in_force(at) == "No heads masked."
    audit = at.dataframe[1].value
    assert list(audit["action"]) == ["remove", "add"] and list(audit["by"]) == ["alice (unverified)"] * 2  # newest first
    at = run_trace(at.switch_page("pages/trace.py").run())
    assert metrics(at)["Masked heads"] == "0"


def test_changes_need_a_name_and_clearing_needs_confirmation():
    at = governance_page(name=None)
    assert "Type your name" in at.info[0].value and at.button(key="gov_quarantine").disabled
    at.sidebar.text_input(key=core.USER_NAME).input("bob").run()
    at = quarantine(at, "3.1, 5.2", "found by hand")
    assert table_heads(at) == ["3.1", "5.2"]
    assert list(at.dataframe[0].value.columns[:4]) == ["head", "level", "by", "at"]  # in view at 1400 px
    assert list(at.dataframe[0].value["by"]) == ["bob (unverified)"] * 2

    assert at.button(key="gov_clear").disabled  # AppTest, like a browser, cannot click it

    at.checkbox(key="gov_clear_confirm").check().run()
    assert not at.button(key="gov_clear").disabled
    at = at.button(key="gov_clear").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Released 3.1, 5.2.")
    assert table_heads(at) == [] and not at.checkbox(key="gov_clear_confirm").value  # confirmation not kept
    assert in_force(at) == "No heads masked."
    assert list(at.dataframe[1].value["action"]) == ["clear", "add"]


def test_bad_heads_and_a_missing_reason_are_errors_that_change_nothing():
    at = quarantine(governance_page(), "3.9")
    (error,) = at.error
    assert error.value == "head 9 does not exist: layer 3 has heads 0-8"
    # shown in the box of the button that caused it, under the button, not at the top of the page
    assert [e.value for e in at.get_by_key("gov_chosen_box").error] == [error.value]
    at = quarantine(at, "3.1", reason="")
    assert "a quarantine needs a reason" in at.get_by_key("gov_chosen_box").error[0].value
    assert not at.exception and table_heads(at) == []


def test_verify_reruns_the_evidence_prompt_with_and_without_the_quarantine():
    at = quarantine(governance_page(), "29.0, 29.1, 29.2, 29.3, 29.4, 29.5, 29.6, 29.7, 29.8", level="both",
                    prompt=PROMPT, target=" Paris")
    at.selectbox(key="gov_verify_pick").set_value("29.0")
    at = at.button(key="gov_verify_button").click().run()
    assert not at.exception and not at.error
    check = at.session_state[core.GOV_VERIFY]
    assert check.prompt == PROMPT and check.target_token == " Paris" and len(check.masks) == 9
    assert check.prob_masked != check.prob_raw  # the whole last layer off changes the prediction
    shown = metrics(at)
    assert shown["p(·Paris) raw model"] == f"{check.prob_raw:.4f}" and check.top_raw == " Paris"
    assert shown["p(·Paris) with the quarantine"] == f"{check.prob_masked:.4f}"


def test_top_head_of_the_last_discovery_is_quarantined_with_its_evidence():
    at = governance_page()
    assert any(i.value.startswith("No discovery has run yet") for i in at.info)
    head = lambda layer, h, effect: SimpleNamespace(layer=layer, head=h, verified_effect=effect)  # noqa: E731
    at.session_state[core.LAST_DISCOVERY] = SimpleNamespace(
        key="0123456789abcdef", result=SimpleNamespace(
            heads=(head(5, 2, -2.31), head(3, 1, -0.4)), metric="logit_diff",
            cases=(SimpleNamespace(prompt=PROMPT, target=" Paris"),)))
    at = at.run().button(key="gov_top_button").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Quarantined 5.2.")
    (row,) = at.dataframe[0].value.to_dict("records")
    assert (row["head"], row["effect"], row["prompt"], row["target"]) == \
        ("5.2", "logit_diff -2.310 when ablated", PROMPT, " Paris")
    # a link that reopens the experiment where a page reads ?experiment=, else the hash itself
    assert row["experiment"] == (core.experiment_url("0123456789abcdef") or "0123456789abcdef")
    assert row["experiment"].endswith("0123456789abcdef")
    assert row["reason"] == "top head of a discovery: logit_diff -2.310 when ablated"


@pytest.fixture
def stub(monkeypatch):
    with OMStub(token=TOKEN) as server:
        monkeypatch.setenv(HOST_ENV, server.url)
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        yield server
    assert server.errors == [], server.errors  # every body the SDK sent was valid for its own models


def _tags(stub, layer: int, head: int) -> list[str]:
    return [t["tagFQN"] for t in stub.column(TABLE.format(layer), f"Head_{head}").get("tags", [])]


def test_openmetadata_bootstrap_quarantine_then_server_down_keeps_the_mask_local(stub):
    at = governance_page()
    assert not at.exception and not at.error
    shown = metrics(at)
    assert (shown["Governed in"], shown["Server version"]) == ("OpenMetadata", "2.0.6")
    assert f"OpenMetadata 2.0.6 at {stub.url}" in [c.value for c in at.sidebar.caption]

    at = at.button(key="gov_bootstrap").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Catalog bootstrapped: ") and TABLE.format(29) in stub.state.entities["tables"]
    at = quarantine(at, "3.1", experiment="a1b2c3d4e5f60718")
    assert not at.error and "OpenMetadata at" in at.success[0].value and "is up to date" in at.success[0].value
    assert _tags(stub, 3, 1) == [TAG_FQN] and "a1b2c3d4e5f60718" in stub.column(TABLE.format(3), "Head_1")["description"]
    assert metrics(at)["Outbox"] == "0"

    stub.stop()
    at = quarantine(at, "4.2", reason="found while the server was down")
    assert not at.exception
    assert any("in force locally now" in w.value for w in at.warning)  # the change's own report
    outbox = [w.value for w in at.warning if w.value.startswith("The quarantine took effect locally")]
    assert outbox and "1 change(s) wait in the outbox and will be sent on the next sync" in outbox[0]
    assert "unreachable" in at.error[0].value  # the connection status says why
    assert metrics(at)["Outbox"] == "1" and table_heads(at) == ["3.1", "4.2"]
    assert in_force(at) == "quarantine: `3.1` (projection), `4.2` (projection)"
    at = run_trace(at.switch_page("pages/trace.py").run())
    assert metrics(at)["Masked heads"] == "2"  # the local mask applies with the server down

    stub.start()  # same port, same state
    at = at.switch_page("pages/governance.py").run()
    at = at.button(key="gov_sync").click().run()
    assert not at.exception and not at.error
    assert "1 change(s) sent" in at.success[0].value and "already equal" in at.success[0].value
    assert _tags(stub, 4, 2) == [TAG_FQN] and metrics(at)["Outbox"] == "0"
    assert not [w for w in at.warning if w.value.startswith("The quarantine took effect locally")]
    assert TOKEN not in str([e.value for e in (*at.markdown, *at.caption, *at.success, *at.warning)])


# ---- a quarantined SAE feature: mask table, audit log, embedded catalog, sidebar, and a trace that applies it

FEATURE = "layers.15.resid.post.sae.7"


def act_on_features(at, button, names, reason=""):
    at.text_input(key=ufq.NAMES).input(names)
    at.text_input(key=ufq.REASON).input(reason)
    return at.button(key=button).click().run()


def test_a_feature_quarantine_is_listed_audited_catalogued_and_in_force_until_lifted():
    at = act_on_features(governance_page(), ufq.QUARANTINE, FEATURE, "fires on ' Sydney'")
    assert not at.exception and not at.error
    assert any(s.value == f"Quarantined {FEATURE}." for s in at.success)
    masks, audit, catalog = (d.value for d in at.dataframe[:3])
    row = masks.iloc[0]
    assert (row["head"], row["level"], row["reason"], row["by"]) == (FEATURE, "feature", "fires on ' Sydney'",
                                                                     "alice (unverified)")
    assert (audit.iloc[0]["action"], audit.iloc[0]["heads"]) == ("add", FEATURE)
    col = catalog[catalog["column"] == feature_column(FEATURE)].iloc[0]
    assert (col["table"], col["tags"], col["level"], col["reason"]) == ("Layer_15", TAG_FQN, "feature",
                                                                        "fires on ' Sydney'")
    assert in_force(at) == f"quarantine: `{FEATURE}` (feature)"

    trace = run_trace(at.switch_page("pages/trace.py").run())
    assert not trace.exception and not trace.error
    result = trace.session_state[core.TRACE_RUN].result
    assert [m.feature for m in result.masked_features] == [FEATURE] and result.fidelity.argmax_agreement == 1.0
    assert FEATURE in next(m for m in trace.metric if m.label == "Masked heads").proto.help

    at = act_on_features(trace.switch_page("pages/governance.py").run(), ufq.LIFT, FEATURE)
    assert not at.exception and not at.error
    assert any(s.value == f"Released {FEATURE}." for s in at.success)
    assert at.dataframe[0].value.empty and feature_column(FEATURE) not in set(at.dataframe[2].value["column"])
    assert in_force(at) == "No heads masked."

    at = act_on_features(at, ufq.QUARANTINE, "layers.15.resid.post.sae.99999", "x")
    assert at.error[0].value == "feature 99999 does not exist: layers.15.resid.post.sae has features 0-4607"
