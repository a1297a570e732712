"""LLM labels through an OpenAI-compatible endpoint, against a loopback stand-in of that API that
answers a bounded number of requests and stops."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from synapse_core.features.catalog import FeatureInfo
from synapse_core.features.llmlabel import LLMConfig, LLMError, config_from_env, llm_label
from synapse_core.features.stats import TopContext

FEATURE = FeatureInfo(
    name="layers.1.resid.post.sae.3", sae="layers.1.resid.post.sae", feature=3, label="auto", density=0.01,
    max_activation=5.0, mean_activation=2.0,
    top_contexts=[TopContext([0, 10, 11, 12, 13], 2, 5.0), TopContext([0, 14, 11, 15, 16], 2, 4.0)],
    histogram=[1] * 20, promoted=[(20, 3.0), (21, 2.0)], suppressed=[(22, -3.0)], cooccurring=[])


def decode(ids):
    return "".join(f" w{i}" for i in ids)


@pytest.fixture
def stand_in():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body))
            reply = {"choices": [{"message": {"role": "assistant", "content": ' "Repeated word w11." \n'}}]}
            if body["model"] == "broken":
                reply = {"error": "no such model"}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", seen
    finally:
        server.shutdown()  # the stand-in stops with the test
        server.server_close()
        thread.join(timeout=30)


def test_label_comes_from_the_endpoint_with_the_top_contexts(stand_in):
    url, seen = stand_in
    label = llm_label(FEATURE, decode, LLMConfig(url, "tiny", "secret"))
    assert label == "Repeated word w11"
    path, auth, body = seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer secret" and body["model"] == "tiny"
    asked = body["messages"][0]["content"]
    assert "w0 w10[[ w11]] w12 w13" in asked and "w14[[ w11]]" in asked and "' w20'" in asked


def test_a_bad_answer_or_no_endpoint_is_named(stand_in):
    url, _ = stand_in
    with pytest.raises(LLMError, match="answered without choices"):
        llm_label(FEATURE, decode, LLMConfig(url, "broken"))
    with pytest.raises(LLMError, match="did not answer"):
        llm_label(FEATURE, decode, LLMConfig("http://127.0.0.1:9/v1", "tiny", timeout_s=2))


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("SYNAPSE_LLM_URL", raising=False)
    assert config_from_env() is None
    monkeypatch.setenv("SYNAPSE_LLM_URL", "http://localhost:11434/v1/")
    assert config_from_env() == LLMConfig("http://localhost:11434/v1", "gpt-4o-mini", None)
