"""Widgets whose values are also written through session state (by the guided demo or a share link)
take their default from session state only: a `value=` beside it makes Streamlit log a warning with a
stack trace on every such run (AppTest runs without a runtime, where Streamlit never warns, so this
reads the page sources)."""
import ast
from pathlib import Path

import pytest

from ui import demo
from ui import discover as ui_discover

ROOT = Path(__file__).resolve().parents[2]
WRITTEN = set(demo.FILLED_KEYS) | set(ui_discover.INPUT_DEFAULTS)  # the demo's keys, the page's defaults


def keyed_widgets(path: Path):
    """(key, keyword names) of every call with a literal key= in a page."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            kwargs = {k.arg: k.value for k in node.keywords if k.arg}
            key = kwargs.get("key")
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                yield key.value, set(kwargs)


@pytest.mark.parametrize("page", sorted(p.stem for p in (ROOT / "pages").glob("*.py")))
def test_widgets_written_through_session_state_have_no_value_argument(page):
    doubled = [key for key, kwargs in keyed_widgets(ROOT / "pages" / f"{page}.py") if key in WRITTEN and "value" in kwargs]
    assert doubled == []


def test_a_share_link_writes_only_widgets_with_defaults_in_session_state():
    class Config:
        prompts, targets, contrasts = ("p",), (" t",), (None,)
        top_k_heads, max_pair_sweeps, verify_heads, baseline_draws, seed = 3, 1, 30, 20, 0

    written = set(ui_discover.inputs_of(Config))
    doubled = [key for key, kwargs in keyed_widgets(ROOT / "pages" / "discover.py") if key in written and "value" in kwargs]
    assert doubled == [] and {"discover_prompt", "discover_target", "discover_top_k"} <= written
