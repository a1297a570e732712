"""End-to-end tests in a real browser: the app served by `streamlit run app.py`, driven by headless
Chromium through Playwright, clicking and typing as a person would.

Chromium comes from Debian's `chromium` package (Playwright's own browser download does not work
here); `.ci/run` installs it. Without /usr/bin/chromium every test in this folder is skipped, so
`make test` still passes on a machine that lacks it.

Fixtures for test files beside this one:
- `synapse_server`: base URL of one Streamlit server for the whole session, on a free loopback port,
  with its own empty SYNAPSE_HOME (the converted-weights cache SYNAPSE_MODEL_CACHE is shared).
- `page`: a Playwright page in a fresh browser context, i.e. a new Streamlit session.
- `app`: an `AppDriver` over `page` that opens the home page, moves between pages by the sidebar,
  waits for reruns to finish and saves screenshots to SCREENSHOTS (a git-ignored folder;
  `make screenshots` writes docs/screenshots instead).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from e2e_helpers import CHROMIUM, CHROMIUM_ARGS, DEFAULT_MS, ROOT, SERVER_START_S, VIEWPORT, AppDriver

E2E_DIR = Path(__file__).resolve().parent


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return (f"end-to-end browser tests need Chromium at {CHROMIUM}: "
                "apt-get install -y --no-install-recommends chromium (.ci/run does this)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "end-to-end browser tests need the playwright package: run `make setup`"
    return None


def pytest_collection_modifyitems(config, items):
    # This hook sees every collected item, not only this folder's: skip just ours.
    reason = _skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item so `page` can save a screenshot when the test failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


# ---------------------------------------------------------------- the app server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def synapse_server(tmp_path_factory):
    """`streamlit run app.py` on a free loopback port for the session; yields its base URL."""
    home = tmp_path_factory.mktemp("e2e-synapse-home")
    log_path = tmp_path_factory.mktemp("e2e-server") / "streamlit.log"
    port = _free_port()
    env = {**os.environ, "SYNAPSE_HOME": str(home)}  # SYNAPSE_MODEL_CACHE etc. from tests/conftest.py
    streamlit = Path(sys.executable).with_name("streamlit")
    if not streamlit.exists():
        streamlit = ROOT / ".venv" / "bin" / "streamlit"
    command = [str(streamlit), "run", "app.py", "--server.headless", "true", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _healthy(url):
            if server.poll() is not None:
                pytest.fail(f"streamlit exited with status {server.returncode} before it served "
                            f"{url}; log {log_path}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer {url}/_stcore/health within {SERVER_START_S} s; "
                            f"log {log_path}:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)


# ---------------------------------------------------------------- the browser
@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, request, tmp_path):
    """A page in a fresh browser context: a new Streamlit session with no state from other tests."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(DEFAULT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            shot = tmp_path / "failure.png"
            try:
                page.screenshot(path=str(shot), full_page=True)
                print(f"\nscreenshot at failure: {shot}")
            except Exception as exc:  # a screenshot must not hide the test's own failure
                print(f"\nno screenshot at failure: {exc}")
            if errors:
                print("page errors:\n" + "\n".join(errors))
        context.close()


@pytest.fixture
def app(page, synapse_server) -> AppDriver:
    return AppDriver(page, synapse_server)
