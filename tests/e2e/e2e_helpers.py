"""Constants and the page driver the end-to-end tests share (fixtures live in conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Debian's chromium package; SYNAPSE_E2E_CHROMIUM points elsewhere (e.g. another OS's Chromium).
CHROMIUM = Path(os.environ.get("SYNAPSE_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Screenshots go to a git-ignored folder, so `make test` leaves the clone clean; `make screenshots`
# points SYNAPSE_SCREENSHOTS at docs/screenshots to renew the README's pictures.
SCREENSHOTS = Path(os.environ.get("SYNAPSE_SCREENSHOTS") or ROOT / ".synapse-test-out" / "screenshots")
MODEL_NAME = "SmolLM2-135M-Instruct"

# The machine is slow and shared: the first model load on a fresh SYNAPSE_MODEL_CACHE takes ~25 s
# (dequantizing the GGUF file), tracing a few tokens a few seconds, each more under load.
SERVER_START_S = 120
MODEL_LOAD_MS = 300_000
RUN_MS = 300_000
DEFAULT_MS = 120_000
VIEWPORT = {"width": 1400, "height": 900}


class AppDriver:
    """What a person does with the app, in Playwright's auto-waiting locators."""

    def __init__(self, page, base_url: str):
        self.page = page
        self.base_url = base_url

    @property
    def sidebar(self):
        return self.page.get_by_test_id("stSidebar")

    @property
    def main(self):
        return self.page.get_by_test_id("stMain")

    def open_home(self) -> None:
        """Open the home URL (never a page URL first: a fresh server would run that page on its own,
        without app.py's sidebar) and wait until the sidebar shows the loaded model."""
        self.page.goto(self.base_url + "/")
        self.sidebar.get_by_text(MODEL_NAME, exact=True).wait_for(timeout=MODEL_LOAD_MS)
        self.wait_idle()

    def go_to(self, title: str) -> None:
        """Click a page's link in the sidebar navigation and wait for the page's title."""
        self.page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
        self.main.get_by_role("heading", name=title, exact=True).wait_for()
        self.wait_idle()

    def wait_idle(self, timeout_ms: int = RUN_MS) -> None:
        """Wait until the script run in progress (if any) has finished. A run a click has only just
        asked for may not have started yet: wait for what it should show, too."""
        self.page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
            state="attached", timeout=timeout_ms)

    def metric(self, label: str):
        """The value element of the metric card labelled `label`."""
        card = self.main.get_by_test_id("stMetric").filter(
            has=self.page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True))
        return card.get_by_test_id("stMetricValue")

    def screenshot(self, name: str) -> Path:
        """A full-page screenshot at SCREENSHOTS/<name>.png.

        Streamlit scrolls its main area and its sidebar inside elements, not the document, so a plain
        full-page screenshot would stop at the viewport: grow the viewport to the taller one first.
        """
        self.wait_idle()
        height = self.page.evaluate(
            "() => Math.max(document.documentElement.scrollHeight,"
            " ...[...document.querySelectorAll('[data-testid=\"stMain\"], [data-testid=\"stAppViewContainer\"],"
            " [data-testid=\"stSidebarContent\"]')]"
            ".map(e => e.scrollHeight))")
        self.page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], int(height))})
        self.page.wait_for_timeout(1000)  # let charts and the graph iframe redraw at the new size
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.page.set_viewport_size(VIEWPORT)
        return path
