"""The cost of a quarantine on the Discover page, on a tiny word-level model saved as a folder: the
cheapest sufficient set and its trade-off chart, a chosen point made the heads to quarantine, and the
cost report measured beside the Quarantine button and kept with the quarantine."""
import os
import sys
from pathlib import Path

import pytest
from app_helpers import app

from synapse_core import load_model
from synapse_core.analysis.capabilities import Capability
from synapse_core.analysis.perplexity import TextDocs
from synapse_core.governance.maskstore import MaskStore
from ui import core
from ui import cost as ucost
from ui import discover as ui_discover

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the tiny word-level models
from ablation_models import WORDS, tiny_handle

CAPS = (Capability("capitals", "the capital of France is the city of", "Paris"),
        Capability("people", "Mary gave a drink to", "John"))


@pytest.fixture(autouse=True)
def own_home_tiny_report(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path))
    handle = tiny_handle("llama")
    words = tuple(handle.tokenizer(" ".join(WORDS * 3)).input_ids)
    text = TextDocs("tiny words", "e" * 16, (words[:60], words[60:130]))
    monkeypatch.setattr(ucost, "capabilities", lambda: CAPS)
    monkeypatch.setattr(ucost, "DEFAULT_WINDOW", 16)  # the tiny model's context is 64 tokens
    monkeypatch.setattr(ucost, "_corpus", lambda *a: (text, None))


def test_the_cheapest_set_is_charted_chosen_costed_and_quarantined_with_its_report(tiny_folder):
    at = app()
    at.sidebar.text_input(key=core.USER_NAME).input("alice")
    at.sidebar.text_input(key=core.MODEL_INPUT).input(tiny_folder)
    at = at.sidebar.button(key="model_load").click().run()
    assert os.path.basename(tiny_folder) in at.session_state[core.LOADED_SPEC]
    at = at.switch_page("pages/discover.py").run()
    at.text_area(key="discover_prompt").input("the capital of France is the city of")
    at.text_input(key="discover_target").input("Paris")
    at.text_input(key="discover_contrast").input("London")
    at.slider(key="discover_top_k").set_value(3)
    at = at.button(key="discover_run_button").click().run()
    assert not at.exception and not at.error

    at = at.button(key="discover_cheapest_button").click().run()
    assert not at.exception and not at.error
    _, share, found, points = at.session_state[ucost.TRADEOFF]
    assert share == 0.8 and found.chosen is not None and points
    assert any(s.value.startswith(f"{len(found.chosen)} head(s) reach 80%") for s in at.success)
    assert [p.heads for p in points][:len(found.steps)] == [s.heads for s in found.steps]
    pick = next(label for label in at.selectbox(key="discover_tradeoff_pick").options
                if label.startswith(f"greedy {len(found.chosen)}:"))
    at.selectbox(key="discover_tradeoff_pick").set_value(pick)
    at = at.button(key="discover_tradeoff_use").click().run()
    chosen = [f"{h.layer}.{h.head}" for h in found.chosen]
    assert at.multiselect(key=ui_discover.QUARANTINE_HEADS).value == chosen

    at = at.button(key="discover_cost_button").click().run()
    assert not at.exception and not at.error
    (report,) = ucost.known_reports(at.session_state)
    assert {f"{m.layer}.{m.head}" for m in report.result.heads} == set(chosen)
    assert any("capability prompts change answer" in m.value for m in (*at.success, *at.warning))
    at = at.button(key="discover_quarantine_button").click().run()
    assert not at.exception
    entries = MaskStore().list(load_model(tiny_folder))
    assert {e.short for e in entries} == set(chosen)
    assert all(e.cost and e.cost.startswith(f"report {report.hash}: ") for e in entries)


def test_a_cost_report_cancelled_on_the_page_keeps_nothing(tiny_folder, monkeypatch):
    """The cost report runs as a job of the page (ui/jobs.py): its Cancel flag, set here at the first
    pass, stops it at the next one; no report is kept, stored or offered as evidence."""
    from synapse_core.experiments import costs

    real = costs.run_cost

    def press_cancel(handle, config, text, store, progress, **kwargs):
        def report(stage, done, total):
            kwargs["cancel"].__self__.set()  # the job's cancel flag (cancel is its is_set): what Cancel sets
            progress(stage, done, total)
        return real(handle, config, text, store, report, **kwargs)

    monkeypatch.setattr(ucost.costs, "run_cost", press_cancel)
    at = app()
    at.sidebar.text_input(key=core.MODEL_INPUT).input(tiny_folder)
    at = at.sidebar.button(key="model_load").click().run()
    at = at.switch_page("pages/discover.py").run()
    at.text_area(key="discover_prompt").input("the capital of France is the city of")
    at.text_input(key="discover_target").input("Paris")
    at.text_input(key="discover_contrast").input("London")
    at = at.button(key="discover_run_button").click().run()
    at = at.button(key="discover_cost_button").click().run()
    assert not at.exception and not at.error
    assert [w.value for w in at.warning if "cancelled" in w.value] == [
        "The run was cancelled (cancelled before it started); nothing of it was stored."]  # the next pass's
    assert ucost.known_reports(at.session_state) == []
    monkeypatch.setattr(ucost.costs, "run_cost", real)
    at = at.button(key="discover_cost_button").click().run()  # measured again, it runs to the end
    assert not at.exception and len(ucost.known_reports(at.session_state)) == 1
