"""The home page and the Trace page in a real browser, used as a person uses them."""
import pytest

from e2e_helpers import MODEL_NAME, RUN_MS

expect = pytest.importorskip("playwright.sync_api", reason="the e2e tests need playwright: make setup").expect

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
    expect(app.metric("Lineage depth")).to_have_text("31")  # 30 layers: ingress -> 30 heads -> egress
    expect(main).to_contain_text("Computed and stored · key")

    # The layer x head heatmap: vega-embed drew it with a real size, one cell per head (30 x 9).
    # (st.altair_chart's key= adds no st-key-* class, so the chart is found by its axis titles.)
    heatmap = main.get_by_test_id("stVegaLiteChart").filter(has_text="layer").filter(has_text="activity")
    expect(heatmap).to_have_count(1)
    drawing = heatmap.locator("svg, canvas").first
    expect(drawing).to_be_visible()
    box = drawing.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 100, box
    expect(heatmap.locator("g.mark-rect.role-mark path")).to_have_count(30 * 9)

    # The thought path: streamlit-agraph's iframe, with vis-network's canvas drawn inside it.
    graph = main.locator('iframe[title="streamlit_agraph.agraph"]')
    expect(graph).to_be_visible()
    box = graph.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 100, box
    expect(graph.content_frame.locator("canvas").first).to_be_visible()

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
