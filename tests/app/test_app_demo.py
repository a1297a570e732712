"""The guided demo: one click on an example fills the Trace, Discover and Ablate pages, which then
open ready to Run, and the values survive moving between the pages."""
import pytest
from app_helpers import app

from ui import demo


def test_home_shows_the_examples_and_the_walkthrough():
    at = app()
    assert not at.exception
    assert [at.button(key=f"demo_home_{e.key}").label for e in demo.EXAMPLES] == [e.title for e in demo.EXAMPLES]
    assert [at.sidebar.button(key=f"demo_sidebar_{e.key}").label for e in demo.EXAMPLES] == [
        e.title for e in demo.EXAMPLES]
    text = "\n".join(m.value for m in at.markdown)
    assert "Discover" in text and "Quarantine" in text and "Masked heads" in text
    assert not at.success  # nothing loaded yet


@pytest.mark.parametrize("where", ["home", "sidebar"])
def test_clicking_the_hallucination_example_fills_every_page(where):
    at = app()
    at.button(key=f"demo_{where}_hallucination").click().run()
    assert not at.exception
    if where == "home":
        assert "Hallucination: Sydney" in at.success[0].value

    at.switch_page("pages/trace.py").run()
    assert at.text_area(key="trace_prompt").value == "The capital of Australia is the city of"
    assert at.number_input(key="trace_max_new").value == demo.TRACE_MAX_NEW

    at.switch_page("pages/discover.py").run()
    assert at.radio(key="discover_mode").value == "One prompt"
    assert at.text_area(key="discover_prompt").value == "The capital of Australia is the city of"
    assert at.text_input(key="discover_target").value == " Sydney"
    assert at.text_input(key="discover_contrast").value == " Canberra"
    assert at.slider(key="discover_top_k").value == 3
    assert at.slider(key="discover_pairs").value == demo.DISCOVER_PAIRS

    at.switch_page("pages/ablate.py").run()
    assert at.selectbox(key="ablate_site").value == "attn.head"
    assert at.text_input(key="ablate_heads").value == "0.6, 23.5, 21.3"
    assert at.text_area(key="ablate_prompt").value == "The capital of Australia is the city of"
    assert at.text_input(key="ablate_target").value == " Sydney"
    assert at.text_input(key="ablate_contrast").value == " Canberra"

    at.switch_page("pages/graph.py").run()
    assert at.text_area(key="graph_prompt").value == "The capital of Australia is the city of"
    assert (at.text_input(key="graph_target").value, at.text_input(key="graph_contrast").value) == (" Sydney", " Canberra")

    # Back to Trace after two other pages: the prompt is still there (demo.keep).
    at.switch_page("pages/trace.py").run()
    assert at.text_area(key="trace_prompt").value == "The capital of Australia is the city of"
    assert not at.exception and not at.error


def test_another_example_replaces_the_first_and_its_stale_results():
    at = app()
    at.button(key="demo_home_ioi").click().run()
    at.session_state["trace_run"] = "an old trace"  # a result of the earlier prompt
    at.sidebar.button(key="demo_sidebar_factual").click().run()
    assert "trace_run" not in at.session_state
    assert "Loaded: Fact: Paris. Each page is ready to Run." in [c.value for c in at.sidebar.caption]
    at.switch_page("pages/discover.py").run()
    assert at.text_area(key="discover_prompt").value == "The Eiffel Tower is in the city of"
    assert at.text_input(key="discover_target").value == " Paris"
    assert at.text_input(key="discover_contrast").value == " London"


def test_every_example_is_a_prompt_with_a_target_contrast_and_heads():
    for example in demo.EXAMPLES:
        assert example.prompt and example.target.startswith(" ") and example.contrast.startswith(" ")
        assert example.target != example.contrast
        assert all(h.strip().count(".") == 1 for h in example.heads.split(","))
