"""composition_scores() against the definition, with explicit d_model x d_model matrices."""
import pytest
import torch

from synapse_core.analysis.composition import composition_scores


def _brute_force(arch, layer_a, layer_b):
    a = {k: v.detach().double() for k, v in arch.head_weights(layer_a).items()}
    b = {k: v.detach().double() for k, v in arch.head_weights(layer_b).items()}
    h = arch.n_heads
    out = {name: torch.zeros(h, h, dtype=torch.float64) for name in "qkv"}
    for i in range(h):
        w_ov_a = a["W_O"][i] @ a["W_V"][i]  # (d_model, d_model)
        for j in range(h):
            w_qk = b["W_Q"][j].T @ b["W_K"][j]  # (d_model, d_model)
            w_ov_b = b["W_O"][j] @ b["W_V"][j]
            n_a = torch.linalg.matrix_norm(w_ov_a)
            out["q"][i, j] = torch.linalg.matrix_norm(w_qk.T @ w_ov_a) / (torch.linalg.matrix_norm(w_qk) * n_a)
            out["k"][i, j] = torch.linalg.matrix_norm(w_qk @ w_ov_a) / (torch.linalg.matrix_norm(w_qk) * n_a)
            out["v"][i, j] = torch.linalg.matrix_norm(w_ov_b @ w_ov_a) / (torch.linalg.matrix_norm(w_ov_b) * n_a)
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi3", "gpt_neox"])
def test_scores_match_the_definition(tiny, family):
    arch = tiny.make_handle(family).arch
    got = composition_scores(arch, 0, 1)
    expected = _brute_force(arch, 0, 1)
    assert set(got) == {"q", "k", "v"}
    for name in "qkv":
        assert got[name].shape == (arch.n_heads, arch.n_heads)  # (head_a, head_b)
        torch.testing.assert_close(got[name].double(), expected[name], atol=1e-5, rtol=1e-4)
        assert torch.all(got[name] >= 0) and torch.all(got[name] <= 1)
    # q and k differ (a transpose apart), so a swapped pair would fail above
    assert not torch.allclose(expected["q"], expected["k"])


def test_scores_are_indexed_sender_then_receiver(tiny):
    """Scores are (sender, receiver): editing the senders 0 and 1 changes rows 0-1 and nothing else."""
    handle = tiny.make_handle("llama")
    before = composition_scores(handle.arch, 0, 1)["v"]
    v_proj = handle.arch.attn[0].v_proj
    with torch.no_grad():
        # heads 0 and 1 share kv head 0 (rows 0-7 of v_proj)
        v_proj.weight[1:8] = v_proj.weight[0]
    after = composition_scores(handle.arch, 0, 1)["v"]
    assert not torch.allclose(after[:2], before[:2])
    torch.testing.assert_close(after[2:], before[2:])


def test_sender_must_come_first(tiny):
    arch = tiny.make_handle("llama").arch
    with pytest.raises(ValueError, match="layers 1 and 0"):
        composition_scores(arch, 1, 0)
    with pytest.raises(ValueError, match="layers 1 and 1"):
        composition_scores(arch, 1, 1)


def test_head_subsets_and_the_cache_give_the_same_scores(tiny):
    arch = tiny.make_handle("phi3").arch
    full = composition_scores(arch, 0, 1)
    cache = {}
    for _ in range(2):  # the second call answers from the cache
        part = composition_scores(arch, 0, 1, cache=cache, heads_a=[2, 0], heads_b=[3])
        for name in "qkv":
            assert part[name].shape == (2, 1)
            torch.testing.assert_close(part[name], full[name][[2, 0]][:, [3]])
    assert cache  # and it was used
