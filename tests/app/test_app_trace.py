"""The Trace page on the real bundled model, driven by widget keys."""
import json

import ui
from app_helpers import PROMPT, chart_frames, metrics, run_trace, trace_page


def test_trace_renders_every_view_and_a_second_run_comes_from_the_cache():
    at = run_trace(trace_page())
    assert not at.exception and not at.error
    assert "Paris" in at.code[0].value
    shown = metrics(at)
    assert shown["Trace fidelity"] == "100%"
    assert shown["Masked heads"] == "0"
    assert shown["Lineage depth"] == "31"  # 30 layers: ingress -> 30 heads -> egress
    assert shown["Backend"] == "transformers · cpu · float32"
    key = at.session_state[ui.TRACE_RUN].key
    assert not at.success and at.caption[0].value == f"Computed and stored · key `{key}`"

    activity, attention, influence = chart_frames(at)
    assert len(activity) == 30 * 9 and activity["activity"].gt(0).all()
    n_prompt = len(at.session_state[ui.TRACE_RUN].result.prompt_tokens)
    # output token 0: its context is the prompt; causal rows each sum to 1
    assert attention["query"].nunique() == n_prompt
    assert attention.groupby("query")["attention"].sum().round(4).eq(1).all()
    assert len(influence) == n_prompt
    graph = json.loads(json.loads(at.get("component_instance")[0].proto.json_args)["data"])
    assert graph["nodes"][0]["id"] == "Prompt_Ingress" and graph["nodes"][-1]["id"] == "Response_Egress"
    assert len(graph["edges"]) == 31 and all(e["label"] for e in graph["edges"])
    assert len(at.get("download_button")) == 3

    at.button(key="trace_run_button").click().run()
    assert not at.exception
    assert at.success[0].value == f"Answered from cache · key `{key}`"
    assert "Paris" in at.code[0].value


def test_choosing_a_head_and_token_redraws_its_attention():
    at = run_trace(trace_page())  # same request as above: answered from the store
    at.selectbox(key="trace_attn_layer").set_value(3)
    at.selectbox(key="trace_attn_head").set_value(1)
    at.selectbox(key="trace_attn_output").set_value(2).run()
    assert not at.exception and not at.error
    assert any(c.value.startswith("Attention probabilities of L3.H1") for c in at.caption)
    result = at.session_state[ui.TRACE_RUN].result
    attention = chart_frames(at)[1]
    assert attention["query"].nunique() == len(result.prompt_tokens) + 2  # prompt + 2 generated tokens
    last = attention[attention["query"] == attention["query"].iloc[-1]]["attention"].to_numpy()
    # the row that predicted output token 2 is the row the trace itself recorded for L3.H1
    recorded = result.attention[2, 3, 1, : len(last)]
    assert abs(last - recorded).max() < 1e-4


def test_a_session_mask_is_applied_and_counted():
    at = trace_page(masks="3.1")
    assert "`3.1` (projection)" in at.sidebar.markdown[-1].value
    at = run_trace(at)
    assert not at.exception and not at.error
    assert metrics(at)["Masked heads"] == "1"
    activity = chart_frames(at)[0]
    masked = activity[(activity["layer"] == 3) & (activity["head"] == 1)]
    assert masked["masked"].item() and masked["activity"].item() == 0
    assert activity.loc[~activity["masked"], "activity"].gt(0).all()


def test_empty_prompt_gives_an_error_not_an_exception():
    at = run_trace(trace_page(), prompt="   ")
    assert not at.exception
    assert "the prompt is empty" in at.error[0].value
    assert not at.metric


def test_out_of_range_head_gives_an_error_not_an_exception():
    at = trace_page(masks="3.9")
    assert not at.exception
    assert at.sidebar.error[0].value == "head 9 does not exist: layer 3 has heads 0-8"
    at = run_trace(at, prompt=PROMPT)
    assert not at.exception
    assert at.error[0].value == "head 9 does not exist: layer 3 has heads 0-8"
    assert not at.metric
