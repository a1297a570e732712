"""Guided demo: ready-made examples on the bundled model (SmolLM2-135M-Instruct) that fill the Trace,
Ablate and Discover pages in one click, and the walkthrough the Home page shows.

Pure data and two functions over a session-state mapping; app.py draws the buttons. The heads named
here are what Discover finds on the bundled model with top_k 3 (logit diff target − contrast, no
quarantine); they prefill Ablate so that page, too, opens ready to Run.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

from ui import core
from ui import discover as ui_discover
from ui import graph as ui_graph


@dataclass(frozen=True)
class Example:
    key: str  # stable id: widget keys demo_home_<key> / demo_sidebar_<key>
    title: str  # button label
    prompt: str
    target: str  # the output to explain (for the hallucination: the unwanted token)
    contrast: str  # the output it is measured against (for the hallucination: the right answer)
    heads: str  # the heads Discover finds (top_k 3), prefilled on Ablate as "L.H, L.H"
    story: str  # one line on what the example shows


EXAMPLES = (
    Example("hallucination", "Hallucination: Sydney",
            "The capital of Australia is the city of", " Sydney", " Canberra", "0.6, 23.5, 21.3",
            "The model answers ' Sydney' (p ≈ 0.80), not ' Canberra': find the heads that push the wrong "
            "answer and quarantine them."),
    Example("ioi", "IOI: Mary vs John",
            "When Mary and John went to the store, John gave a drink to", " Mary", " John", "23.3, 1.5, 29.1",
            "Indirect object identification: the model names ' Mary' (p ≈ 0.92), the person who did not give."),
    Example("factual", "Fact: Paris",
            "The Eiffel Tower is in the city of", " Paris", " London", "23.4, 14.8, 12.4",
            "Factual recall: the heads that carry ' Paris' rather than another city."),
)
BY_KEY = {e.key: e for e in EXAMPLES}

TRACE_MAX_NEW = 3  # a short answer keeps the trace quick
DISCOVER_TOP_K = 3  # heads in the circuit
DISCOVER_PAIRS = 1  # pairs ablated together: enough to show the table, quick on a CPU
LOADED = "demo_loaded"  # key of the example loaded last (shown on Home and in the sidebar)

# Every widget key `fill` writes. app.py re-assigns them on each run (`keep`), because Streamlit drops
# a widget's value when its page is not shown: Trace -> Discover -> Trace must still hold the prompt.
FILLED_KEYS = (
    "trace_prompt", "trace_max_new",
    "discover_mode", "discover_prompt", "discover_target", "discover_contrast", "discover_top_k", "discover_pairs",
    "ablate_site", "ablate_heads", "ablate_op", "ablate_prompt", "ablate_target", "ablate_contrast",
    "graph_prompt", "graph_target", "graph_contrast",
)
# Results of an earlier prompt: dropped, so each page opens on the example ready to Run.
STALE_RESULTS = (core.TRACE_RUN, core.LAST_DISCOVERY, core.ABLATE_RUN, ui_graph.GRAPH_RUN, ui_discover.QUARANTINE_HEADS,
                 ui_discover.QUARANTINE_REASON)

WALKTHROUGH = """\
1. **Pick an example** above (or in the sidebar), e.g. *Hallucination: Sydney*.
2. **Trace** → **Run**: the model answers ' Sydney' with p ≈ 0.80; *Masked heads* reads 0.
3. **Discover** → **Run**: the heads behind the unwanted token, ranked (top 3: 0.6, 23.5, 21.3).
4. Type **your name** under *Governance* in the sidebar, then **Quarantine** at the foot of Discover: the heads
   are listed under *Masks in force* in the sidebar and on the **Governance** page.
5. Back to **Trace** → **Run**: *Masked heads* reads 3 and p(' Sydney') falls to ≈ 0.42.
"""


def fill(state: MutableMapping, key: str) -> Example:
    """Write example `key` into the widgets of Trace, Discover and Ablate (as a button's on_click)."""
    example = BY_KEY[key]
    state.update({
        "trace_prompt": example.prompt, "trace_max_new": TRACE_MAX_NEW,
        "discover_mode": ui_discover.SINGLE, "discover_prompt": example.prompt, "discover_target": example.target,
        "discover_contrast": example.contrast, "discover_top_k": DISCOVER_TOP_K, "discover_pairs": DISCOVER_PAIRS,
        "ablate_site": "attn.head", "ablate_heads": example.heads, "ablate_op": "zero",
        "ablate_prompt": example.prompt, "ablate_target": example.target, "ablate_contrast": example.contrast,
        "graph_prompt": example.prompt, "graph_target": example.target, "graph_contrast": example.contrast,
        LOADED: example.key,
    })
    for stale in STALE_RESULTS:
        state.pop(stale, None)
    return example


def keep(state: MutableMapping) -> None:
    """Re-assign the filled widget values so they survive pages on which their widgets are not drawn."""
    for key in FILLED_KEYS:
        if key in state:
            state[key] = state[key]


def loaded(state: MutableMapping) -> Example | None:
    return BY_KEY.get(state.get(LOADED))
