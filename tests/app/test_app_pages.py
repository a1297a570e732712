"""Every page script, and the app around them, runs without an exception."""
import pytest
from app_helpers import ROOT, TIMEOUT, app
from streamlit.testing.v1 import AppTest

from ui import core

PAGES = ["pages/trace.py", "pages/ablate.py", "pages/discover.py", "pages/graph.py", "pages/governance.py"]


def test_app_loads_default_model_and_lists_pages():
    at = app()
    assert not at.exception
    assert at.title[0].value == "Synapse"
    status = at.sidebar.markdown[0].value
    assert "SmolLM2-135M-Instruct" in status and "30 layers × 9 heads" in status and "cpu · float32" in status
    assert len(at.get("page_link")) == 4
    assert [c.value for c in at.sidebar.caption] == [
        "No heads masked.", "Embedded: the quarantine lives in this machine's mask store."]


@pytest.mark.parametrize("page", [*PAGES, "pages/history.py"])
def test_each_page_runs_inside_the_app(page):
    at = app().switch_page(page).run()
    assert not at.exception
    assert at.title[0].value == page.removeprefix("pages/").removesuffix(".py").capitalize()
    assert "SmolLM2-135M-Instruct" in at.sidebar.markdown[0].value  # the sidebar is on every page


@pytest.mark.parametrize("page", PAGES)
def test_page_on_its_own_asks_for_a_model(page):
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "ran without Synapse's sidebar" in at.info[0].value
    assert not at.button  # stopped before any widget


def test_bad_model_spec_shows_an_error_and_keeps_the_loaded_model():
    at = app()
    at.sidebar.text_input(key=core.MODEL_INPUT).input("/nowhere/model.gguf")
    at.sidebar.button(key="model_load").click().run()
    assert not at.exception
    assert "/nowhere/model.gguf does not exist" in at.sidebar.error[0].value
    assert "SmolLM2-135M-Instruct" in at.sidebar.markdown[0].value


def test_a_failed_load_is_said_once_and_the_spec_box_shows_the_model_in_use():
    at = app()
    at.sidebar.text_input(key=core.MODEL_INPUT).input("no/such-model")
    at.sidebar.button(key="model_load").click().run()
    assert not at.exception
    (error,) = at.sidebar.error
    assert error.value.startswith("could not load 'no/such-model': could not fetch 'no/such-model'")
    assert at.sidebar.text_input(key=core.MODEL_INPUT).value == "bundled"  # the model in use
    assert "SmolLM2-135M-Instruct" in at.sidebar.markdown[0].value
    at.switch_page("pages/history.py").run()  # any later run: the error is gone
    assert not at.sidebar.error and not at.exception
    assert at.sidebar.text_input(key=core.MODEL_INPUT).value == "bundled"
