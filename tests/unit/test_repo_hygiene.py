"""What `make test` writes stays out of the tracked tree, so a fresh clone is clean after it."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ignored(path: Path) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
    return done.returncode == 0


@pytest.fixture(autouse=True)
def _in_a_checkout():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")


def test_browser_test_screenshots_go_to_an_ignored_folder(monkeypatch):
    import sys

    monkeypatch.delenv("SYNAPSE_SCREENSHOTS", raising=False)
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "e2e"))
    sys.modules.pop("e2e_helpers", None)
    import e2e_helpers

    target = e2e_helpers.SCREENSHOTS / "home.png"
    assert _ignored(target), target
    assert not _ignored(ROOT / "docs" / "screenshots" / "home.png")  # the README's copies stay tracked
