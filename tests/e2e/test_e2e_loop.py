"""The whole loop of the guided demo in a real browser, as a person walks it (README "Guided demo"):
pick the hallucination example, trace, discover the heads behind the unwanted token, quarantine them,
re-trace and see the masked heads count rise and p(' Sydney') fall. Plus each page's message for bad
input. These tests save the screenshots of every page (see e2e_helpers.SCREENSHOTS)."""
import math
import re

import pytest
from e2e_helpers import RUN_MS

expect = pytest.importorskip("playwright.sync_api", reason="the e2e tests need playwright: make setup").expect

pytestmark = pytest.mark.slow  # a served app and a browser: the slow tier (make test-slow; CI runs it)

PROMPT = "The capital of Australia is the city of"
EMPTY_PROMPT = "the prompt is empty: type some text to run the model on"


def key(app, name: str):
    """A widget by its key= (Streamlit puts `st-key-<key>` on the widget's container)."""
    return app.main.locator(f".st-key-{name}")


def click_and_wait(app, button) -> None:
    button.click()
    app.page.wait_for_timeout(500)  # let the click's rerun start before waiting for it to end
    app.wait_idle(RUN_MS)


def run_page(app, button_key: str) -> None:
    click_and_wait(app, key(app, button_key).get_by_role("button"))


def fill(box, text: str) -> None:
    """Type into a text box and commit it as a person does by leaving it."""
    box.fill(text)
    box.press("Tab")


def shown_probability(app) -> float:
    """p of the first generated token, from the Trace page's token-influence caption
    ("... log p(·Sydney) = -0.218, at the baseline ..."), computed when its button is pressed."""
    run_page(app, "trace_influence_button")
    caption = app.main.get_by_text(re.compile(r"^Influence: ")).inner_text()
    found = re.search(r"log p\(.*?\) = (-?[0-9.]+)", caption)
    assert found, caption
    return math.exp(float(found.group(1)))


def grid_text(table) -> str:
    """The cell texts of an st.dataframe (glide-data-grid draws on a canvas and keeps an accessible table)."""
    cells = table.locator('[role="gridcell"]')
    cells.first.wait_for(state="attached")  # the accessible table is hidden: read it, do not look at it
    return " ".join(cells.all_text_contents())


def test_guided_demo_trace_discover_quarantine_retrace(app):
    page, main, sidebar = app.page, app.main, app.sidebar
    app.open_home()
    click_and_wait(app, key(app, "demo_home_hallucination").get_by_role("button"))
    expect(main.get_by_test_id("stAlertContentSuccess")).to_contain_text("Loaded Hallucination: Sydney")
    app.screenshot("home")

    # 1. Trace: the example is filled in; Run answers ' Sydney' with nothing masked.
    app.go_to("Trace")
    expect(main.get_by_label("Prompt", exact=True)).to_have_value(PROMPT)
    run_page(app, "trace_run_button")
    expect(main.get_by_test_id("stCode").first).to_contain_text("Sydney", timeout=RUN_MS)
    expect(app.metric("Masked heads")).to_have_text("0")
    heatmap = key(app, "trace_activity_chart_box").get_by_test_id("stVegaLiteChart")
    expect(heatmap.locator("g.mark-rect.role-mark path")).to_have_count(30 * 9)
    expect(key(app, "trace_influence_output").get_by_role("combobox")).to_have_value(re.compile("Sydney"))
    before = shown_probability(app)
    assert 0.7 < before < 0.9, before  # SmolLM2-135M-Instruct: p(' Sydney') = 0.80
    app.screenshot("trace")

    # 2. Discover: the heads behind ' Sydney' (vs ' Canberra'), top 3, ranked and verified.
    app.go_to("Discover")
    expect(main.get_by_label("Target token (the output to explain)", exact=True)).to_have_value(" Sydney")
    run_page(app, "discover_run_button")
    expect(main.get_by_role("heading", name="Discovered heads")).to_be_visible(timeout=RUN_MS)
    ranked = grid_text(main.get_by_test_id("stDataFrame").first)
    assert "0.6" in ranked and "23.5" in ranked and "21.3" in ranked, ranked
    chosen = key(app, "discover_quarantine_heads")
    for head in ("0.6", "23.5", "21.3"):
        expect(chosen).to_contain_text(head)
    app.screenshot("discover")

    # 3. Quarantine them, as a named analyst.
    fill(sidebar.locator(".st-key-governance_user_name input"), "alice")
    app.wait_idle()
    run_page(app, "discover_quarantine_button")
    for head in ("0.6", "23.5", "21.3"):
        expect(sidebar).to_contain_text(f"{head} (projection)")

    try:
        app.go_to("Governance")
        masks = grid_text(main.get_by_test_id("stDataFrame").first)
        assert "0.6" in masks and "23.5" in masks and "21.3" in masks, masks
        app.screenshot("governance")

        # 4. Trace again: the prompt is still there; three heads masked, p(' Sydney') changed.
        app.go_to("Trace")
        expect(main.get_by_label("Prompt", exact=True)).to_have_value(PROMPT)
        run_page(app, "trace_run_button")
        expect(app.metric("Masked heads")).to_have_text("3", timeout=RUN_MS)
        expect(key(app, "trace_influence_output").get_by_role("combobox")).to_have_value(re.compile("Sydney"))
        after = shown_probability(app)
        assert after < before - 0.2, (before, after)  # 0.80 -> 0.42 on the bundled model
        expect(main.get_by_test_id("stAlertContentError")).to_have_count(0)
    finally:
        # 5. Release them on Governance (the server's mask store is shared by the later tests).
        app.go_to("Governance")
        main.locator(".st-key-gov_clear_confirm").get_by_text("Yes, release all 3").click()
        app.wait_idle()
        click_and_wait(app, main.locator(".st-key-gov_clear").get_by_role("button"))
        expect(sidebar).to_contain_text("No heads masked.")


def test_ablate_with_an_empty_prompt_then_a_bad_head(app):
    main = app.main
    app.open_home()
    click_and_wait(app, app.sidebar.locator(".st-key-demo_sidebar_ioi").get_by_role("button"))
    app.go_to("Ablate")
    expect(main.locator(".st-key-ablate_heads input")).to_have_value("23.3, 1.5, 29.1")
    fill(main.locator(".st-key-ablate_prompt textarea"), "")
    app.wait_idle()
    run_page(app, "ablate_run_button")
    expect(main.get_by_test_id("stAlertContentError")).to_contain_text(EMPTY_PROMPT)

    fill(main.locator(".st-key-ablate_prompt textarea"), "When Mary and John went to the store, John gave a drink to")
    fill(main.locator(".st-key-ablate_heads input"), "3.9")
    app.wait_idle()
    run_page(app, "ablate_run_button")
    expect(main.get_by_test_id("stAlertContentError")).to_contain_text(
        "head 9 does not exist: layer 3 has heads 0-8")


def test_ablate_page_with_the_example_runs(app):
    main = app.main
    app.open_home()
    click_and_wait(app, app.sidebar.locator(".st-key-demo_sidebar_ioi").get_by_role("button"))
    app.go_to("Ablate")
    run_page(app, "ablate_run_button")
    expect(main.get_by_test_id("stMetric").first).to_be_visible(timeout=RUN_MS)
    expect(main.get_by_test_id("stAlertContentError")).to_have_count(0)
    app.screenshot("ablate")


def test_discover_with_an_empty_prompt_shows_the_error(app):
    app.open_home()
    app.go_to("Discover")
    fill(app.main.get_by_label("Target token (the output to explain)", exact=True), " Mary")
    app.wait_idle()
    run_page(app, "discover_run_button")
    expect(app.main.get_by_test_id("stAlertContentError")).to_contain_text(EMPTY_PROMPT)


def test_governance_with_a_bad_head_shows_the_error(app):
    main = app.main
    app.open_home()
    fill(app.sidebar.locator(".st-key-governance_user_name input"), "alice")
    app.wait_idle()
    app.go_to("Governance")
    fill(main.locator(".st-key-gov_heads input"), "3.9")
    fill(main.locator(".st-key-gov_reason input"), "a test")
    app.wait_idle()
    click_and_wait(app, main.locator(".st-key-gov_quarantine").get_by_role("button"))
    # by the button that caused it, in its box, not above the status cards at the top of the page
    expect(main.locator(".st-key-gov_chosen_box").get_by_test_id("stAlertContentError")).to_contain_text(
        "head 9 does not exist: layer 3 has heads 0-8")


def test_history_lists_stored_experiments(app):
    app.open_home()
    click_and_wait(app, app.sidebar.locator(".st-key-demo_sidebar_ioi").get_by_role("button"))
    app.go_to("Ablate")
    run_page(app, "ablate_run_button")
    app.go_to("History")
    expect(app.main.get_by_test_id("stDataFrame").first).to_be_visible()
    assert "Mary" in grid_text(app.main.get_by_test_id("stDataFrame").first)
    app.screenshot("history")
