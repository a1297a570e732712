"""The Features page on the bundled model, over a small SAE (layer 2's residual stream) whose
statistics are computed here from the model's own activations: quality cards, search by label and
by token, sort, one feature's page (top contexts shaded by a re-run, histogram, tokens,
co-occurring features) and a label stored with who and when."""
import json

import numpy as np
import pytest
import torch
from app_helpers import app

from synapse_core.common import settings
from synapse_core.features import catalog, stats
from synapse_core.features.harvest import capture, parse_site
from synapse_core.features.labels import human_labels
from synapse_core.features.pipeline import final_norm_weight
from synapse_core.features.sae import SAEConfig, TopKSAE
from ui import core
from ui import features as uf

SAE = "layers.2.resid.post.sae"
QUALITY = {"l0": 4.0, "dead_frac": 0.125, "dense_frac": 0.0, "fve": 0.9, "fve_trimmed": 0.5, "loss_recovered": 0.75,
           "ce_increase": 0.4}


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("features-home")
        mp.setenv("SYNAPSE_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def sae_folder(home):
    from synapse_core import load_model

    torch.set_num_threads(1)
    handle = load_model("bundled", device="cpu", dtype="float32")
    gen = torch.Generator().manual_seed(0)
    sae = TopKSAE(SAEConfig(d_in=576, d_sae=64, k=4, hook_name="blocks.2.hook_resid_post"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(576, 64, generator=gen) / 24)
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
    tokens = torch.randint(200, 3000, (24, 16), generator=gen)
    site = parse_site("layers.2.resid.post")
    acts = capture(handle, tokens, [site])[site].numpy()  # float32: the stored activations are exact
    arrays = stats.compute(sae, acts, tokens.numpy().astype(np.int32), handle.model.get_output_embeddings().weight,
                           final_norm_weight(handle.model))
    folder = settings.subdir("features") / SAE
    sae.save(folder)
    stats.save(folder, arrays, stats.auto_labels(arrays, handle.tokenizer.decode), {"quality": QUALITY})
    return folder, arrays, handle.tokenizer.decode


def page():
    return app().switch_page("pages/features.py").run()


def test_quality_table_and_one_feature(sae_folder):
    _, arrays, _ = sae_folder
    at = page()
    assert not at.exception and not at.error
    shown = {m.label: m.value for m in at.metric}
    assert shown["L0"] == "4.0" and shown["dead"] == "12.5%" and shown["loss recovered"] == "0.750"
    table = at.dataframe[0].value
    live = int((arrays["density"] > 0).sum())
    assert len(table) == live and list(table["density"]) == sorted(table["density"], reverse=True)
    top = int(table["feature"].iloc[0])
    assert at.selectbox(key=uf.FEATURE_PICK).value == top
    assert at.subheader[0].value == f"{SAE}.{top}"
    assert shown["density"] == f"{float(arrays['density'][top]):.4%}"
    # every top context is drawn, the activating token outlined with its stored activation; shading every
    # token re-runs the windows and gives the same number there, and shades more tokens
    n_top = int((arrays["top_ctx"][top] >= 0).sum())
    counts = {}
    for shade_all, tol in ((False, 1e-3), (True, 2e-3)):
        at.toggle(key="features_shade_all").set_value(shade_all).run()
        bodies = [h.proto.body for h in at.get("html")]
        assert len(bodies) == n_top
        outlined = bodies[0].split("border:1px solid")[0].rsplit('title="', 1)[1].split('"')[0]
        assert float(outlined) == pytest.approx(float(arrays["top_act"][top][0]), abs=tol)
        counts[shade_all] = sum(b.count("rgba(255,140,0,") - b.count("rgba(255,140,0,0.00)") for b in bodies)
    assert counts[True] > counts[False] >= n_top  # the re-run knows every position the feature fires at
    assert at.dataframe[2].value["token"].tolist()  # promoted tokens
    co = at.dataframe[1].value
    assert list(co["feature"]) == [f"{SAE}.{int(j)}" for j, v in zip(arrays["cooc_idx"][top],
                                                                   arrays["cooc_jaccard"][top]) if v > 0]


def test_search_by_label_and_token_and_sort_by_activation(sae_folder):
    _, arrays, decode = sae_folder
    at = page()
    at.radio(key=uf.SORT).set_value("activation").run()
    table = at.dataframe[0].value
    assert list(table["max activation"]) == sorted(table["max activation"], reverse=True)
    f = int(table["feature"].iloc[-1])
    fired = decode([int(arrays["contexts"][arrays["top_ctx"][f][0], arrays["top_pos"][f][0]])]).strip()
    at.radio(key=uf.SEARCH_BY).set_value("token").run()
    at.text_input(key=uf.QUERY).input(fired).run()
    assert f in list(at.dataframe[0].value["feature"])
    assert len(at.dataframe[0].value) < len(table)
    at.radio(key=uf.SEARCH_BY).set_value("label").run()
    at.text_input(key=uf.QUERY).input("no label says this").run()
    assert at.info and "No live feature" in at.info[0].value


def test_a_label_is_stored_with_who_and_when(sae_folder):
    at = page()
    f = at.selectbox(key=uf.FEATURE_PICK).value
    at.text_input(key=uf.LABEL_TEXT).input("the word 'city'")
    at.button(key=uf.LABEL_SAVE).click().run()
    assert at.error and "Type your name" in at.error[0].value
    at.sidebar.text_input(key=core.USER_NAME).input("alice").run()
    at.text_input(key=uf.LABEL_TEXT).input("the word 'city'")
    at.button(key=uf.LABEL_SAVE).click().run()
    assert not at.exception and not at.error
    stored = human_labels(SAE)[f]
    assert (stored.text, stored.by) == ("the word 'city'", "alice (unverified)")
    assert any(f"labelled by alice (unverified) at {stored.at}" in m.value for m in at.markdown)
    assert at.dataframe[0].value.set_index("feature").loc[f, "label"] == "the word 'city'"
    assert catalog.show_feature(f"{SAE}.{f}").label == "the word 'city'"


def test_an_sae_without_statistics_says_what_to_run(sae_folder):
    bare = settings.subdir("features") / "layers.1.resid.post.sae"
    TopKSAE(SAEConfig(d_in=576, d_sae=16, k=2, hook_name="blocks.1.hook_resid_post")).save(bare)
    try:
        at = page()
        at.selectbox(key=uf.SAE_PICK).set_value("layers.1.resid.post.sae").run()
        assert at.info and "has no feature statistics yet: run `synapse features eval layers.1.resid.post.sae`" in \
            at.info[0].value
        assert not at.dataframe
    finally:
        for p in bare.iterdir():
            p.unlink()
        bare.rmdir()


def _ablate_feature(at, feature: str, op: str, value: float | None = None):
    at.selectbox(key="ablate_site").set_value("feature").run()
    at.selectbox(key="ablate_op").set_value(op).run()
    at.text_input(key="ablate_features").input(feature)
    if value is not None:
        at.number_input(key="ablate_feature_value").set_value(value)
    at.text_area(key="ablate_prompt").input("The Eiffel Tower is in the city of")
    at.text_input(key="ablate_target").input(" Paris")
    return at.button(key="ablate_run_button").click().run()


def _kl(at):
    (frame,) = [d.value for d in at.dataframe if list(d.value.columns[:1]) == ["metric"]]
    return float(frame.set_index("metric").loc["KL(clean || intervened), nats", "intervened"])


def test_ablate_page_steers_a_feature_and_steering_by_zero_changes_nothing(sae_folder):
    _, arrays, _ = sae_folder
    f = int(arrays["density"].argmax())
    at = _ablate_feature(app().switch_page("pages/ablate.py").run(), f"{SAE}.{f}", "steer", 0.0)
    assert not at.exception and not at.error
    assert _kl(at) < 1e-9
    at = _ablate_feature(at, f"{SAE}.{f}", "steer", 40.0)
    assert not at.error and _kl(at) > 1e-4
    at = _ablate_feature(at, f"{SAE}.{f + 1000}", "zero")
    assert at.error and f"feature {f + 1000} does not exist" in at.error[0].value


def test_trace_lists_the_features_active_at_each_token(sae_folder):
    from app_helpers import run_trace, trace_page

    from synapse_core import load_model
    from synapse_core.features.activity import feature_activity

    at = run_trace(trace_page(), max_new_tokens=1)
    at.multiselect(key=uf.TRACE_SAES).set_value([SAE]).run()
    assert not at.exception and not at.error
    (frame,) = [d.value for d in at.dataframe if list(d.value.columns[:3]) == ["position", "token", "sae"]]
    result = at.session_state[core.TRACE_RUN].result
    ids = result.prompt_ids + result.generated_ids
    want = feature_activity(load_model("bundled", device="cpu", dtype="float32"), list(ids), [SAE])
    assert list(frame["position"]) == list(range(1, len(ids)))
    first = want.per_token[0].features[0][0]
    assert frame["features"].iloc[0].startswith(f"{first} (")


def test_graph_of_features_draws_the_tree_and_supernodes(sae_folder):
    from synapse_core.features.cograph import feature_graph

    at = page()
    at.number_input(key=uf.GRAPH_SIZE).set_value(20).run()

    def drawn():
        args = json.loads(at.get("component_instance")[0].proto.json_args)
        return json.loads(args["data"])

    table = at.dataframe[0].value
    g = feature_graph(SAE, [int(i) for i in table["feature"][:20]])
    full = drawn()
    assert sorted(int(n["id"]) for n in full["nodes"]) == sorted(g.nodes)
    assert len(full["edges"]) == len(g.edges)
    at.radio(key=uf.GRAPH_KIND).set_value("maximum spanning tree").run()
    assert len(drawn()["edges"]) == len(g.tree) <= len(g.edges)
    assert not at.exception and not at.error


def test_an_llm_label_when_an_endpoint_is_configured(sae_folder, monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    asked = []

    class StandIn(BaseHTTPRequestHandler):  # an OpenAI-compatible chat endpoint on the loopback
        def do_POST(self):  # noqa: N802 - http.server's name
            asked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            data = json.dumps({"choices": [{"message": {"content": "Numbers in a list"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    at = page()
    assert "features_llm_label" not in [b.key for b in at.button]  # off by default
    server = HTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("SYNAPSE_LLM_URL", f"http://127.0.0.1:{server.server_port}/v1")
        monkeypatch.setenv("SYNAPSE_LLM_MODEL", "stand-in")
        at.run()
        f = at.selectbox(key=uf.FEATURE_PICK).value
        at.button(key="features_llm_label").click().run()
    finally:
        server.shutdown()  # the stand-in stops with the test
        server.server_close()
        thread.join(timeout=30)
    assert not at.exception and not at.error
    stored = human_labels(SAE)[f]
    assert (stored.text, stored.by) == ("Numbers in a list", "llm:stand-in")
    assert asked[0]["model"] == "stand-in" and "[[" in asked[0]["messages"][0]["content"]
