"""Graphs of features from stored statistics: co-occurrence edges, the maximum spanning tree, and
supernodes by decoder cosine."""
import numpy as np
import pytest
import torch

from synapse_core.common.errors import BadInput
from synapse_core.features import stats
from synapse_core.features.cograph import _components, feature_graph, max_spanning_forest
from synapse_core.features.sae import SAEConfig, TopKSAE

D, F, K = 8, 12, 3
NAME = "layers.2.resid.post.sae"


@pytest.fixture
def folder(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sae = TopKSAE(SAEConfig(d_in=D, d_sae=F, k=K, hook_name="blocks.2.hook_resid_post"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        sae.W_dec[4] = sae.W_dec[2] * 3 + 0.01  # 2 and 4 write one direction
    acts = torch.randn(30, 6, D, generator=gen).numpy().astype(np.float16)
    tokens = torch.randint(0, 20, (30, 6), generator=gen).numpy().astype(np.int32)
    a = stats.compute(sae, acts, tokens, torch.randn(20, D, generator=gen), None, chunk=50)
    sae.save(tmp_path / NAME)
    stats.save(tmp_path / NAME, a, [f"f{i}" for i in range(F)], {})
    return tmp_path, a


def test_edges_tree_and_supernodes(folder):
    root, a = folder
    g = feature_graph(NAME, list(range(F)), dirs=[root])
    want = {}
    for f in range(F):
        for j, w in zip(a["cooc_idx"][f], a["cooc_jaccard"][f]):
            if w > 0 and int(j) != f:
                key = (min(f, int(j)), max(f, int(j)))
                want[key] = max(want.get(key, 0.0), float(w))
    assert {(x, y): w for x, y, w in g.edges} == pytest.approx(want)
    assert any({2, 4} <= set(s) for s in g.supernodes)
    # a spanning forest: one edge fewer than the nodes of each connected part, every edge from the graph
    parts = _components(range(F), [(x, y) for x, y, _ in g.edges])
    assert len(g.tree) == sum(len(p) - 1 for p in parts) and set(g.tree) <= set(g.edges)


def test_kruskal_keeps_the_heaviest_acyclic_edges():
    assert max_spanning_forest([0, 1, 2], [(0, 1, 0.5), (1, 2, 0.4), (0, 2, 0.9)]) == [(0, 2, 0.9), (0, 1, 0.5)]


def test_bad_feature_and_threshold_are_named(folder):
    root, _ = folder
    with pytest.raises(BadInput, match="feature 12 does not exist"):
        feature_graph(NAME, [12], dirs=[root])
    with pytest.raises(BadInput, match="cosine threshold 1.5"):
        feature_graph(NAME, [1], threshold=1.5, dirs=[root])
