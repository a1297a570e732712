"""Hosting the app for others: which models a visitor may load, who the audit log says made a
change, and damaged governance files shown as errors instead of crashing pages."""
import pytest
from app_helpers import app, run_trace

from ui import core
from synapse_core.governance.omconfig import HOST_ENV, TOKEN_ENV


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path))
    monkeypatch.delenv(HOST_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(core.ALLOWED_MODELS, raising=False)


def test_a_visitor_loads_only_the_models_the_host_allows(monkeypatch):
    """Old code loaded any spec typed in the sidebar: a hub model, or evicting the shared one."""
    monkeypatch.setenv(core.ALLOWED_MODELS, "bundled, other.gguf")
    at = app()
    assert "SmolLM2-135M-Instruct" in at.sidebar.markdown[0].value  # the default is allowed
    at.sidebar.text_input(key=core.MODEL_INPUT).input("gpt2")
    at.sidebar.button(key="model_load").click().run()
    assert not at.exception
    (error,) = at.sidebar.error
    assert error.value == ("could not load 'gpt2': model 'gpt2' is not allowed on this host: choose one of "
                           "bundled, other.gguf (set by SYNAPSE_ALLOWED_MODELS)")
    assert "SmolLM2-135M-Instruct" in at.sidebar.markdown[0].value  # still the model in use


def _quarantine(at, heads="3.1"):
    at = at.switch_page("pages/governance.py").run()
    at.text_input(key="gov_heads").input(heads)
    at.text_input(key="gov_reason").input("emits the unwanted token")
    return at.button(key="gov_quarantine").click().run()


def test_a_typed_author_is_marked_unverified_and_a_signed_in_one_is_not(monkeypatch):
    at = app()
    at.sidebar.text_input(key=core.USER_NAME).input("alice").run()
    at = _quarantine(at)
    assert not at.exception and at.dataframe[0].value.iloc[0]["by"] == "alice (unverified)"

    monkeypatch.setattr(core, "signed_in_user", lambda: "carol@example.com")  # the host signed carol in
    at = app()
    assert not any(t.key == core.USER_NAME for t in at.sidebar.text_input)  # nothing to type
    assert any("Signed in as **carol@example.com**" in c.value for c in at.sidebar.caption)
    at = _quarantine(at, "4.2")
    table = at.dataframe[0].value
    assert list(table["by"]) == ["alice (unverified)", "carol@example.com"]


def test_damaged_governance_files_are_errors_on_the_page_not_crashes(tmp_path):
    at = app()
    at.sidebar.text_input(key=core.USER_NAME).input("alice").run()
    at = _quarantine(at)
    masks = tmp_path / "masks"
    (audit,) = masks.glob("*.audit.jsonl")
    audit.write_bytes(b"\xff not a record\n" + audit.read_bytes())
    at = at.switch_page("pages/governance.py").run()
    assert not at.exception
    assert any("are damaged" in e.value for e in at.error)  # reported...
    assert list(at.dataframe[0].value["head"]) == ["3.1"]  # ...and the quarantine still shown

    (mask_list,) = [p for p in masks.glob("*.json") if p.name.count(".") == 1]
    mask_list.write_bytes(b"\x89PNG\r\n\x1a\n\x00binary")  # old code: UnicodeDecodeError on every page
    at = at.switch_page("pages/governance.py").run()
    assert not at.exception and any("is not UTF-8 text" in e.value for e in at.error)
    at = run_trace(at.switch_page("pages/trace.py").run())
    assert not at.exception and any("is not UTF-8 text" in e.value for e in at.error)
    mask_list.write_text('{"entries": [{"layer": 3')  # truncated: old code, an uncaught StoreError here
    at = at.switch_page("pages/governance.py").run()
    assert not at.exception and any("is not valid JSON" in e.value for e in at.error)
