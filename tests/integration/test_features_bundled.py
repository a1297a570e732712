"""Features on the bundled model: the corpus, the shipped SAEs, and their stored statistics."""
import json

import numpy as np
import pytest
import torch

from synapse_core.features import catalog, corpus
from synapse_core.features.evaluate import ce_figures, splice_fn
from synapse_core.features.harvest import capture, parse_site
from synapse_core.features.sae import load_sae
from synapse_core.hooks import dispatch

SHIPPED_LAYERS = (5, 15, 25)


@pytest.fixture(scope="module")
def shipped():
    saes = {s.layer: s for s in catalog.list_saes([catalog.SHIPPED_DIR]) if s.site == "resid.post"}
    assert set(SHIPPED_LAYERS) <= set(saes), f"shipped SAEs: {sorted(saes)}"
    return saes


def test_corpus_splits_are_disjoint_and_mixed(installed):
    held = {d.doc_id for d in corpus.mixed_documents("heldout")}
    first = [d for _, d in zip(range(400), corpus.mixed_documents("train"))]
    assert held and not held & {d.doc_id for d in first}
    assert {d.doc_id.split("/")[0] for d in first} == {s.name for s in corpus.SOURCES}
    assert all(corpus.split_of(d) == "heldout" for d in held)


def test_contexts_are_packed_and_deterministic(installed, bundled):
    a = list(corpus.contexts(bundled.tokenizer, "heldout", 64, 5))
    b = list(corpus.contexts(bundled.tokenizer, "heldout", 64, 5))
    sep = corpus.separator_id(bundled.tokenizer)
    assert len(a) == 5 and all(c.shape == (64,) and c[0] == sep for c in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sep == bundled.tokenizer.eos_token_id


def test_shipped_saes_are_what_the_issue_asks(shipped):
    total = 0
    for layer in SHIPPED_LAYERS:
        info = shipped[layer]
        cfg = json.loads((info.path / "cfg.json").read_text())
        assert info.name == f"layers.{layer}.resid.post.sae"
        assert cfg["k"] == 32 and cfg["d_sae"] >= 8 * 576 and cfg["d_in"] == 576
        assert cfg["hook_name"] == f"blocks.{layer}.hook_resid_post" and cfg["dtype"] == "float16"
        assert cfg["normalize_activations"] == "none" and cfg["architecture"] == "topk"
        q = info.quality
        assert 0 < q["l0"] <= 32 and 0 <= q["dead_frac"] < 0.5 and q["ce_zero"] > q["ce_sae"] > q["ce_clean"]
        assert q["loss_recovered"] == pytest.approx((q["ce_zero"] - q["ce_sae"]) / (q["ce_zero"] - q["ce_clean"]))
        total += sum(f.stat().st_size for f in info.path.iterdir())
    assert total < 40 * 2**20


def test_a_top_context_reproduces_its_activation(bundled, shipped):
    info = shipped[15]
    sae = load_sae(info.path, dtype="float32")
    feat = catalog.show_feature(f"{info.name}.{int(np.argmax(catalog.densities(info.name)))}")
    top = feat.top_contexts[0]
    ids = torch.tensor([top.token_ids])
    site = parse_site("layers.15.resid.post")
    x = capture(bundled, ids, [site])[site][0, top.token_index]
    with torch.no_grad():
        got = float(sae.encode(x)[feat.feature])
    # stored activations were computed from float16 harvests
    assert got == pytest.approx(top.activation, rel=0.02, abs=0.05)
    assert top.activation == pytest.approx(feat.max_activation)


def test_splice_with_error_term_is_the_identity(bundled, shipped):
    sae = load_sae(shipped[15].path, dtype="float32")
    ids = bundled.tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        clean = bundled.model(ids).logits
        with dispatch.hooks(bundled.model, bundled.arch, {(15, "resid.post"): [splice_fn(sae, "sae", keep_error=True)]}):
            same = bundled.model(ids).logits
    assert torch.allclose(same, clean, atol=1e-4, rtol=0)


def test_spliced_loss_sits_between_clean_and_zeroed(bundled, shipped, installed):
    sae = load_sae(shipped[15].path, dtype="float32")
    tokens = np.stack(list(corpus.contexts(bundled.tokenizer, "heldout", 64, 2)))
    ce = ce_figures(bundled, {"layers.15.resid.post": sae}, tokens)["layers.15.resid.post"]
    assert ce["ce_clean"] < ce["ce_sae"] < ce["ce_zero"]


def test_loading_checks_the_site_width(shipped):
    with pytest.raises(Exception, match="d_in = 576, but"):
        catalog.load(shipped[5].name, d_model=960)
