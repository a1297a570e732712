"""Helpers that drive the Synapse app in AppTest."""
from pathlib import Path

import pyarrow as pa
from streamlit.testing.v1 import AppTest

from ui import core

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The Eiffel Tower is in the city of"
TIMEOUT = 300  # the first run of a session may convert the bundled model (~25 s); a trace takes ~10-20 s


def app(masks: str = "") -> AppTest:
    """The full app (sidebar loads the default model), with `masks` typed in the sidebar."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    if masks:
        at.sidebar.text_input(key=core.MASK_TEXT).input(masks).run()
    return at


def trace_page(masks: str = "") -> AppTest:
    return app(masks).switch_page("pages/trace.py").run()


def run_trace(at: AppTest, prompt: str = PROMPT, max_new_tokens: int = 3) -> AppTest:
    at.text_area(key="trace_prompt").input(prompt)
    at.number_input(key="trace_max_new").set_value(max_new_tokens)
    return at.button(key="trace_run_button").click().run()


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def chart_frames(at: AppTest):
    """The data behind each altair chart on the page, in page order, as pandas frames."""
    frames = []
    for chart in at.get("vega_lite_chart"):
        (dataset,) = chart.proto.datasets
        frames.append(pa.ipc.open_stream(dataset.data.data).read_all().to_pandas())
    return frames
