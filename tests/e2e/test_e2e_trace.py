"""The home page and the Trace page in a real browser, used as a person uses them."""
import re

import pytest
from e2e_helpers import MODEL_NAME, RUN_MS

expect = pytest.importorskip("playwright.sync_api", reason="the e2e tests need playwright: make setup").expect

pytestmark = pytest.mark.slow  # a served app and a browser: the slow tier (make test-slow; CI runs it)

PROMPT = "The Eiffel Tower is in the city of"


def run_trace(app, prompt: str, max_new_tokens: int = 4) -> None:
    """Type a prompt and a token budget on the Trace page and press Run."""
    page = app.page
    box = app.main.get_by_label("Prompt", exact=True)
    box.fill(prompt)
    box.press("Control+Enter")  # commit the text as a person does by leaving the box
    tokens = app.main.get_by_label("Max new tokens", exact=True)
    tokens.fill(str(max_new_tokens))
    tokens.press("Enter")
    app.wait_idle()
    app.main.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_timeout(500)  # let the click's rerun start before waiting for it to end
    app.wait_idle(RUN_MS)


def shown_axis_labels(chart, axis: str) -> list[str]:
    """The labels vega drew on one axis ("X-axis" or "Y-axis") of `chart`, leaving out any it hid
    because they would overlap (vega keeps those in the SVG with opacity 0)."""
    return chart.locator(f'g[aria-label^="{axis}"] g.role-axis-label text').evaluate_all(
        "texts => texts.filter(t => getComputedStyle(t).opacity !== '0' && t.getAttribute('opacity') !== '0')"
        ".map(t => t.textContent.trim())")


def test_home_page_says_what_the_app_does_and_shows_the_model(app):
    app.open_home()
    expect(app.main.get_by_role("heading", name="Synapse", exact=True)).to_be_visible()
    expect(app.main).to_contain_text("Synapse lets you look inside a language model")
    for page_name in ("Trace", "Ablate", "Discover", "Governance"):
        expect(app.main.get_by_role("link", name=page_name).first).to_be_visible()
        expect(app.page.get_by_test_id("stSidebarNav").get_by_role("link", name=page_name)).to_be_visible()
    sidebar = app.sidebar
    expect(sidebar.get_by_text(MODEL_NAME, exact=True)).to_be_visible()
    expect(sidebar).to_contain_text("30 layers × 9 heads")
    expect(sidebar).to_contain_text("No heads masked.")
    app.screenshot("home")


def test_trace_a_prompt_shows_paris_full_fidelity_and_every_view(app):
    app.open_home()
    app.go_to("Trace")
    expect(app.main).to_contain_text("Type a prompt and press Run to trace the model.")
    run_trace(app, PROMPT)

    main = app.main
    expect(main.get_by_role("heading", name="Generated text")).to_be_visible(timeout=RUN_MS)
    expect(main.get_by_test_id("stCode").first).to_contain_text("Paris")
    expect(app.metric("Trace fidelity")).to_have_text("100%")
    expect(app.metric("Masked heads")).to_have_text("0")
    expect(app.metric("Lineage depth")).to_have_text(re.compile(r"^\d+ of 30$"))  # path heads that carry their layer
    expect(main).to_contain_text("Computed and stored · experiment")

    # The layer x head heatmap: vega-embed drew it with a real size, one cell per head (30 x 9),
    # and a label on every layer row (none thinned out for overlap).
    heatmap = main.locator(".st-key-trace_activity_chart_box").get_by_test_id("stVegaLiteChart")
    expect(heatmap).to_have_count(1)
    drawing = heatmap.locator("svg, canvas").first
    expect(drawing).to_be_visible()
    box = drawing.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 100, box
    expect(heatmap.locator("g.mark-rect.role-mark path")).to_have_count(30 * 9)
    assert shown_axis_labels(heatmap, "Y-axis") == [str(layer) for layer in range(29, -1, -1)]

    # One head's attention: a row and a label for every token of the prompt.
    attention = main.locator(".st-key-trace_attention_chart_box").get_by_test_id("stVegaLiteChart")
    expect(attention.locator("svg").first).to_be_visible()
    rows = shown_axis_labels(attention, "Y-axis")
    assert len(rows) == 9 and rows[0].endswith("The") and rows[-1].endswith("of"), rows

    main.locator(".st-key-trace_influence_button").get_by_role("button").click()  # integrated gradients: on demand
    app.page.wait_for_timeout(500)
    app.wait_idle(RUN_MS)
    influence = main.locator(".st-key-trace_influence_chart_box").get_by_test_id("stVegaLiteChart")
    expect(influence.locator("svg").first).to_be_visible(timeout=RUN_MS)
    assert shown_axis_labels(influence, "Y-axis") == rows

    # The thought path: streamlit-agraph's iframe, with vis-network's canvas drawn inside it, tall
    # enough for its rows of labelled nodes (vis-network draws labels on the canvas: see the screenshot).
    graph = main.locator(".st-key-trace_path_graph_box iframe")
    expect(graph).to_be_visible()
    box = graph.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 500, box
    canvas = graph.content_frame.locator("canvas").first
    expect(canvas).to_be_visible()
    inner = canvas.bounding_box()
    assert inner is not None and inner["width"] <= box["width"] + 1, (inner, box)  # not wider than its frame

    expect(main.get_by_role("button", name="Trace (JSON)")).to_be_visible()
    expect(main.get_by_test_id("stAlertContentError")).to_have_count(0)
    app.screenshot("trace")


def test_trace_with_an_empty_prompt_shows_the_error(app):
    app.open_home()
    app.go_to("Trace")
    run_trace(app, "")
    expect(app.main.get_by_test_id("stAlertContentError")).to_contain_text(
        "the prompt is empty: type some text to run the model on")
    expect(app.main.get_by_test_id("stMetric")).to_have_count(0)
    expect(app.main).to_contain_text("Type a prompt and press Run to trace the model.")
