"""The Trace page on the real bundled model, driven by widget keys."""
import json
import re

import numpy as np

from app_helpers import PROMPT, app, chart_frames, metrics, run_trace, trace_page
from streamlit.proto.Metric_pb2 import Metric as MetricProto

from ui import core


def test_trace_renders_every_view_and_a_second_run_comes_from_the_cache():
    at = run_trace(trace_page())
    assert not at.exception and not at.error
    assert "Paris" in at.code[0].value
    shown = metrics(at)
    assert shown["Trace fidelity"] == "100%"
    assert shown["Masked heads"] == "0"
    result = at.session_state[core.TRACE_RUN].result
    path = result.thought_path
    # heads above two even shares (2/9) of their layer's activity; it used to read 31 whatever the input
    assert shown["Lineage depth"] == f"{sum(h.share > 2 / 9 for h in path.heads)} of 30"
    assert 0 < path.depth < 30
    assert shown["Backend"] == "cpu · float32"  # short enough not to be cut off in its card
    backend = next(m for m in at.metric if m.label == "Backend")
    assert "transformers" in backend.proto.help
    fidelity = next(m for m in at.metric if m.label == "Trace fidelity")
    assert fidelity.proto.delta.startswith("max logit diff")
    assert fidelity.proto.direction == MetricProto.MetricDirection.NONE  # no arrow: a diff size is not a rise
    key = at.session_state[core.TRACE_RUN].key
    assert not at.success and at.caption[0].value == (
        f"Computed and stored · experiment `{key}` · [share link](trace?experiment={key})")

    frames = [frame.value for frame in at.dataframe]
    tokens = next(f for f in frames if "token" in f.columns)  # the token table
    table = next(f for f in frames if "head" in f.columns and "activity" in f.columns)  # the thought-path table
    assert list(tokens.columns) == ["token", "p (sampled from)", "p (model)"]
    assert tokens["p (sampled from)"].eq(1.0).all()  # greedy: all the mass on the argmax
    assert 0.5 < tokens["p (model)"].iloc[0] < 1.0  # ' Paris'
    assert list(table.columns) == ["head", "activity", "share of layer", "counts toward depth",
                                   "composition from previous", "composition kind"]
    assert table["share of layer"].between(0, 1).all() and table["composition from previous"].iloc[1:].between(0, 1).all()
    assert table["composition from previous"].iloc[:1].isna().all()  # layer 0's head has no previous head

    activity, attention = chart_frames(at)[:2]  # token influence waits for its button (later charts: other sections)
    assert len(activity) == 30 * 9 and activity["activity"].gt(0).all()
    n_prompt = len(result.prompt_tokens)
    # output token 0: its context is the prompt; causal rows each sum to 1
    assert attention["query"].nunique() == n_prompt
    assert attention.groupby("query")["attention"].sum().round(4).eq(1).all()
    # every row of the charts keeps its label: 18 px a row, no overlap thinning
    specs = [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")][:2]
    for spec, n_rows in zip(specs, (30, n_prompt), strict=True):
        assert spec["encoding"]["y"]["axis"]["labelOverlap"] is False
        assert spec["height"] >= 18 * n_rows
    args = json.loads(at.get("component_instance")[0].proto.json_args)
    graph, config = json.loads(args["data"]), json.loads(args["config"])
    nodes = graph["nodes"]
    assert nodes[0]["id"] == "Prompt_Ingress" and nodes[-1]["id"] == "Response_Egress"
    # every node labelled; heads as on every page ("12.3"), the engine's id ("L12.H3") kept underneath
    assert all(n["label"] == n["id"] for n in (nodes[0], nodes[-1]))
    assert all(n["label"] == f"{n['id'][1:].replace('.H', '.')}" for n in nodes[1:-1])
    assert len(graph["edges"]) == 31
    assert all(e["label"].split()[-1] in {"q", "k", "v"} for e in graph["edges"][1:-1])  # "0.05 v": composition only
    assert graph["edges"][0]["label"] == graph["edges"][-1]["label"] == ""  # ingress/egress carry no number
    # fixed positions on a few rows (not one 32-node line squeezed into the box), physics off
    assert not config["physics"]["enabled"] and 500 <= int(config["height"].removesuffix("px")) <= 700
    assert config["groups"] == {}  # vis-network rejects None ('Invalid type received for "groups"')
    assert len({n["y"] for n in nodes}) == 4 and len({n["x"] for n in nodes}) == 8
    assert len({(n["x"], n["y"]) for n in nodes}) == len(nodes)
    heads = nodes[1:-1]
    assert 10 <= min(n["size"] for n in heads) < max(n["size"] for n in heads) <= 24
    assert len(at.get("download_button")) == 3

    at.button(key="trace_run_button").click().run()
    assert not at.exception
    assert at.success[0].value == f"Answered from the store · experiment `{key}` · [share link](trace?experiment={key})"
    assert "Paris" in at.code[0].value


def test_choosing_a_head_and_token_redraws_its_attention():
    at = run_trace(trace_page())  # same request as above: answered from the store
    at.selectbox(key="trace_attn_layer").set_value(3)
    at.selectbox(key="trace_attn_head").set_value(1)
    at.selectbox(key="trace_attn_output").set_value(2).run()
    assert not at.exception and not at.error
    assert any(c.value.startswith("Attention probabilities of head 3.1,") for c in at.caption)
    result = at.session_state[core.TRACE_RUN].result
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
    assert next(m for m in at.metric if m.label == "Masked heads").proto.delta == "every one reads 0"
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


def test_a_share_link_reopens_the_stored_trace_and_history_lists_it():
    at = run_trace(trace_page())
    key = at.session_state[core.TRACE_RUN].key
    linked = app()
    linked.query_params["experiment"] = key
    linked = linked.switch_page("pages/trace.py").run()
    assert not linked.exception and not linked.error
    run = linked.session_state[core.TRACE_RUN]
    assert run.key == key and run.from_cache and "Paris" in linked.code[0].value
    history = app().switch_page("pages/history.py").run()
    assert not history.exception
    listed = history.dataframe[0].value
    assert key in list(listed["experiment"]) and "trace" in list(listed["kind"])
    assert f"trace?experiment={key}" in list(listed["link"])
    for bad, message in (("0123456789abcdef", "no experiment 0123456789abcdef is stored here"),
                         ("not-a-hash", "'not-a-hash' is not an experiment id")):
        broken = app()
        broken.query_params["experiment"] = bad
        broken = broken.switch_page("pages/trace.py").run()
        assert not broken.exception and message in broken.error[0].value


def test_token_influence_waits_for_its_button_and_shows_its_completeness_error():
    # ' Sydney' after this prompt converges in ~80 gradients (' Paris' after PROMPT takes ~200)
    at = run_trace(trace_page(), prompt="The capital of Australia is the city of", max_new_tokens=1)
    assert not any(c.value.startswith("Influence:") for c in at.caption)
    at.button(key="trace_influence_button").click().run()
    assert not at.exception and not at.error
    result = at.session_state[core.TRACE_RUN].result
    influence = next(f for f in chart_frames(at) if "score" in f.columns and "token" in f.columns)
    assert len(influence) == len(result.prompt_tokens)
    (caption,) = [c.value for c in at.caption if c.value.startswith("Influence:")]
    assert "integrated gradients" in caption and "completeness error" in caption
    shown = re.search(r"log p\(.*?\) = (-?[0-9.]+), at the baseline (-?[0-9.]+); completeness error ([0-9.]+)%", caption)
    log_p, log_p0, error = (float(g) for g in shown.groups())
    assert abs(log_p - np.log(result.model_probs[0])) < 1e-3
    # the error shown is the scores' sum against the change of log p (to the caption's rounding)
    assert abs(abs(influence["score"].sum() - (log_p - log_p0)) / abs(log_p - log_p0) * 100 - error) < 0.05
