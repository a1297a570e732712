"""The cost of a quarantine on the Governance page, on the real bundled model: measured on demand with
a verdict, required before a quarantine when the setting says so, a second confirmation above the
perplexity limit, and the report kept in the audit log. A short text and a few capability prompts
keep it quick; the engine's numbers are tested in tests/unit/test_cost.py."""
import pytest
from app_helpers import app as fresh_app

from synapse_core.analysis.capabilities import default_capabilities
from synapse_core.experiments import costs
from synapse_core.governance.omconfig import HOST_ENV, TOKEN_ENV
from ui import core
from ui import cost as ucost


@pytest.fixture(autouse=True)
def own_home_small_report(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path))
    monkeypatch.delenv(HOST_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    caps = default_capabilities()
    monkeypatch.setattr(ucost, "capabilities", lambda: tuple(c for c in caps if c.group == "facts and capitals"))
    monkeypatch.setattr(ucost, "TEXT_TOKENS", 512)


def frame(at, column: str):
    """The first dataframe on the page with this column (AppTest does not expose a dataframe's key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def governance_page():
    at = fresh_app()
    at.sidebar.text_input(key=core.USER_NAME).input("alice").run()
    return at.switch_page("pages/governance.py").run()


def test_a_required_cost_report_gates_the_quarantine_and_is_kept_as_evidence():
    at = governance_page()
    at.checkbox(key="gov_cost_require").check().run()
    at.number_input(key="gov_cost_max").set_value(100.0).run()
    at.text_input(key="gov_heads").input("0.6, 23.5").run()
    at.text_input(key="gov_reason").input("pushes ' Sydney'").run()
    at.text_input(key="gov_prompt").input("The capital of Australia is the city of").run()
    at.text_input(key="gov_target").input(" Sydney").run()
    assert at.button(key="gov_quarantine").disabled  # no report yet

    at = at.button(key="gov_cost_button").click().run()
    assert not at.exception and not at.error
    box = at.get_by_key("gov_chosen_box")
    verdict = [m.value for m in (*box.success, *box.warning) if "capability prompts change answer" in m.value]
    assert verdict and "p(' Sydney') by" in verdict[0] and "perplexity" in verdict[0]
    assert "of 20 capability prompts" in verdict[0]
    groups = frame(at, "accuracy before")
    assert list(groups["group"]) == ["facts and capitals"] and groups["prompts"][0] == 20
    assert not at.button(key="gov_quarantine").disabled

    at = at.button(key="gov_quarantine").click().run()
    assert not at.exception
    audit = frame(at, "detail")
    (report,) = ucost.known_reports(at.session_state)
    assert audit["detail"][0].startswith(f"cost report {report.hash}: ")
    masks = at.dataframe[0].value
    assert list(masks["head"]) == ["0.6", "23.5"] and set(masks["cost"]) == {costs.evidence(report)}


def test_a_report_above_the_perplexity_limit_asks_for_a_second_confirmation():
    at = governance_page()
    at.number_input(key="gov_cost_max").set_value(0.0).run()
    at.text_input(key="gov_heads").input("0.6").run()
    at.text_input(key="gov_reason").input("pushes ' Sydney'").run()
    at = at.button(key="gov_cost_button").click().run()
    (report,) = ucost.known_reports(at.session_state)
    assert report.result.text.perplexity_change > 0
    assert at.button(key="gov_quarantine").disabled
    at = at.checkbox(key="gov_cost_confirm").check().run()
    assert not at.button(key="gov_quarantine").disabled
