"""The sidebar's loading message tells a first (converting) load of a GGUF model from a cached one."""
from synapse_core.model.gguf import converted_cache
from ui.model_load import loading_text


def test_a_gguf_model_not_yet_converted_says_it_converts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNAPSE_MODEL_CACHE", str(tmp_path / "models"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    assert loading_text(str(gguf)).startswith("Converting tiny.gguf to safetensors, once")
    cache = converted_cache(gguf)
    cache.mkdir(parents=True)
    (cache / "model.safetensors").write_bytes(b"")
    assert loading_text(str(gguf)) == f"Loading model {str(gguf)!r} …"
    assert loading_text("gpt2") == "Loading model 'gpt2' …"
    assert loading_text(str(tmp_path / "none.gguf")).startswith("Loading model")
