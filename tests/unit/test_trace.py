"""trace() on tiny models: mostly llama (grouped-query attention, rotary), and every family for fidelity."""
import numpy as np
import pytest
import torch

from synapse_core import BadInput, HeadMask, Sampling, generate
from synapse_core.analysis.trace import trace
from synapse_core.hooks.dispatch import hooks
from synapse_core.hooks.masking import mask_fns

PROMPT = "the cat sat on the mat"  # six words of the tiny vocabulary: six tokens
STEPS = 5


def _greedy_by_hand(handle, prompt_ids, steps):
    """Greedy decoding with full forward passes, no KV cache and no hooks."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(handle.model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids):]


def _greedy_by_hand_masked(handle, prompt_ids, steps, mask):
    with hooks(handle.model, handle.arch, mask_fns((mask,))):
        return _greedy_by_hand(handle, prompt_ids, steps)


def test_shapes_and_fidelity(llama):
    r = trace(llama, PROMPT, max_new_tokens=STEPS)
    arch = llama.arch
    n_prompt = len(r.prompt_ids)
    assert r.prompt_tokens == tuple(PROMPT.split())
    assert len(r.generated_ids) == STEPS  # the tiny tokenizer has no eos
    assert r.step_activity.shape == (STEPS, arch.n_layers, arch.n_heads)
    np.testing.assert_allclose(r.head_activity, r.step_activity.mean(axis=0), rtol=1e-6)
    assert r.attention.shape == (STEPS, arch.n_layers, arch.n_heads, n_prompt + STEPS - 1)
    assert r.fidelity.argmax_agreement == 1.0
    assert r.fidelity.max_logit_diff < 1e-4
    assert list(r.generated_ids) == _greedy_by_hand(llama, r.prompt_ids, STEPS)
    assert r.fidelity.masks_verified and r.fidelity.unverified_masks == ()
    assert r.sampled_probs == (1.0,) * STEPS  # greedy: all the mass on the argmax
    assert len(r.model_probs) == STEPS and all(0 < p < 1 for p in r.model_probs)


def test_attention_rows_are_distributions_over_the_keys_seen(llama):
    r = trace(llama, PROMPT, max_new_tokens=STEPS)
    n_prompt = len(r.prompt_ids)
    for step in range(STEPS):
        valid = n_prompt + step  # the predicting position sees the prompt and the tokens before it
        rows = r.attention[step, :, :, :valid]
        np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-5)
        assert np.all(r.attention[step, :, :, valid:] == 0)


def _written(handle, layer, z):
    """What each head writes into the residual stream: the output projection applied to z with every
    other head zeroed, minus the projection of zero (its bias). z (head, d_head) -> (head, d_model)."""
    proj = handle.arch.out_proj[layer]
    n_heads, d_head = z.shape
    rows = torch.zeros(n_heads, n_heads, d_head)
    rows[torch.arange(n_heads), torch.arange(n_heads)] = z
    with torch.no_grad():
        return proj(rows.reshape(n_heads, -1)) - proj(torch.zeros(1, n_heads * d_head))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_step_zero_activity_is_what_each_head_writes(tiny, family):
    """Activity at step 0 is || W_O^h z_h || at the last prompt position, computed here through the
    model's own output projection (Linear for llama, Conv1D for gpt2), and the attention row is that
    position's pattern."""
    handle = tiny.make_handle(family)
    r = trace(handle, PROMPT, max_new_tokens=2)
    seen = {}
    fns = {}
    for layer in range(handle.arch.n_layers):
        fns[(layer, "attn.z")] = [lambda t, layer=layer: seen.__setitem__(("z", layer), t.clone())]
        fns[(layer, "attn.pattern")] = [lambda t, layer=layer: seen.__setitem__(("p", layer), t.clone())]
    with torch.no_grad(), hooks(handle.model, handle.arch, fns):
        handle.model(torch.tensor([r.prompt_ids]))
    n = len(r.prompt_ids)
    for layer in range(handle.arch.n_layers):
        expected = _written(handle, layer, seen[("z", layer)][0, -1]).norm(dim=-1).numpy()
        np.testing.assert_allclose(r.step_activity[0, layer], expected, rtol=1e-4, atol=1e-6)
        # the norm of z itself is another number: the projection's scale per head matters
        assert not np.allclose(r.step_activity[0, layer], seen[("z", layer)][0, -1].norm(dim=-1).numpy(), rtol=1e-2)
        np.testing.assert_allclose(r.attention[0, layer, :, :n], seen[("p", layer)][0, :, -1].numpy(), atol=1e-6)


def test_activity_is_unchanged_by_a_rescaling_that_keeps_the_model(tiny):
    """Value weights of one key/value group divided by 3 and its heads' slices of W_O multiplied by 3:
    the model computes the same function, so what each head writes is the same; the norm of z (the
    old measure) would read a third."""
    plain = trace(tiny.make_handle("llama"), PROMPT, max_new_tokens=2)
    handle = tiny.make_handle("llama", model=tiny.make_model("llama"))
    arch, layer, kv = handle.arch, 1, 1
    d, group_size = arch.d_head, arch.n_heads // arch.n_kv_heads
    group = list(range(kv * group_size, (kv + 1) * group_size))
    with torch.no_grad():
        arch.attn[layer].v_proj.weight[kv * d:(kv + 1) * d] /= 3.0
        if arch.attn[layer].v_proj.bias is not None:
            arch.attn[layer].v_proj.bias[kv * d:(kv + 1) * d] /= 3.0
        for h in group:
            arch.out_proj[layer].weight[:, h * d:(h + 1) * d] *= 3.0
    rescaled = trace(handle, PROMPT, max_new_tokens=2)
    assert rescaled.generated_ids == plain.generated_ids
    np.testing.assert_allclose(rescaled.step_activity, plain.step_activity, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("level", ["projection", "attention", "both"])
def test_masked_head_reads_zero_at_every_step(llama, level):
    r = trace(llama, PROMPT, max_new_tokens=STEPS, masks=[HeadMask(1, 2, level)])
    assert np.all(r.step_activity[:, 1, 2] == 0.0)
    others = np.delete(r.step_activity.reshape(STEPS, -1), 1 * llama.arch.n_heads + 2, axis=1)
    assert np.all(others > 0)
    assert r.fidelity.argmax_agreement == 1.0
    assert r.masked_heads == (HeadMask(1, 2, level),)
    if level != "projection":
        assert np.all(r.attention[:, 1, 2] == 0)


def test_masks_change_the_generation_like_the_hand_run(llama):
    r = trace(llama, PROMPT, max_new_tokens=STEPS, masks=["0.0", "0.1", "1.2"])
    with hooks(llama.model, llama.arch, mask_fns((HeadMask(0, 0), HeadMask(0, 1), HeadMask(1, 2)))):
        expected = _greedy_by_hand(llama, r.prompt_ids, STEPS)
    assert list(r.generated_ids) == expected


def test_sampling_is_reproducible_and_greedy_is_temperature_zero(llama):
    hot = Sampling(temperature=5.0, seed=7)
    a = trace(llama, PROMPT, max_new_tokens=STEPS, sampling=hot)
    b = trace(llama, PROMPT, max_new_tokens=STEPS, sampling=hot)
    assert a.generated_ids == b.generated_ids
    runs = {trace(llama, PROMPT, max_new_tokens=STEPS, sampling=Sampling(temperature=5.0, seed=s)).generated_ids
            for s in range(5)}
    assert len(runs) > 1  # the seed matters, so sampling really samples
    greedy = trace(llama, PROMPT, max_new_tokens=STEPS)
    zero = trace(llama, PROMPT, max_new_tokens=STEPS, sampling=Sampling(temperature=0.0, seed=123))
    assert greedy.generated_ids == zero.generated_ids
    assert list(greedy.generated_ids) == _greedy_by_hand(llama, greedy.prompt_ids, STEPS)


def test_top_k_one_is_greedy(llama):
    greedy = trace(llama, PROMPT, max_new_tokens=STEPS)
    top1 = trace(llama, PROMPT, max_new_tokens=STEPS, sampling=Sampling(temperature=3.0, top_k=1, seed=3))
    assert top1.generated_ids == greedy.generated_ids


def test_generate_returns_the_traced_text(llama):
    r = trace(llama, PROMPT, max_new_tokens=STEPS, masks=["1.1"])
    assert generate(llama, PROMPT, max_new_tokens=STEPS, masks=["1.1"]) == r.generated_text


def test_trace_on_gpt2(gpt2):
    r = trace(gpt2, PROMPT, max_new_tokens=3, masks=["0.3"])
    assert r.step_activity.shape == (3, 2, 4)
    assert np.all(r.step_activity[:, 0, 3] == 0)
    assert r.fidelity.argmax_agreement == 1.0
    assert list(r.generated_ids) == _greedy_by_hand_masked(gpt2, r.prompt_ids, 3, HeadMask(0, 3))


def test_thought_path_and_top_heads(llama):
    r = trace(llama, PROMPT, max_new_tokens=STEPS, top_k=3)
    flat = sorted(r.head_activity.ravel(), reverse=True)
    assert [h.score for h in r.top_heads] == pytest.approx(flat[:3])
    path = r.thought_path
    assert path.nodes[0] == "Prompt_Ingress" and path.nodes[-1] == "Response_Egress"
    assert len(path.edges) == llama.arch.n_layers + 1
    for layer, head in enumerate(path.heads):
        assert head.head == int(r.head_activity[layer].argmax())
        assert head.share == pytest.approx(r.head_activity[layer].max() / r.head_activity[layer].sum())
    assert path.depth == sum(h.share > 2 / llama.arch.n_heads for h in path.heads)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(masks=["1.4"]), "head 4 does not exist"),
    (dict(masks=["2.0"]), "layer 2 does not exist"),
    (dict(masks=["one.two"]), "'one.two'"),
    (dict(max_new_tokens=0), r"got 0"),
    (dict(max_new_tokens=-3), r"got -3"),
    (dict(max_new_tokens=64), "64 new tokens"),
    (dict(sampling=Sampling(temperature=-1.0)), "temperature -1.0"),
    (dict(sampling=Sampling(top_k=-2)), "top_k -2"),
])
def test_bad_input_names_the_value(llama, kwargs, message):
    args = dict(prompt=PROMPT, max_new_tokens=2) | kwargs
    with pytest.raises(BadInput, match=message):
        trace(llama, args.pop("prompt"), **args)


def test_every_family_traces_faithfully(handle):
    """KV-cached, hooked generation agrees with full re-runs, sliding windows and softcaps included."""
    r = trace(handle, PROMPT, max_new_tokens=STEPS, masks=["1.1"])
    assert r.fidelity.argmax_agreement == 1.0
    assert r.fidelity.max_logit_diff < 1e-4
    assert np.all(r.step_activity[:, 1, 1] == 0)
    assert list(r.generated_ids) == _greedy_by_hand_masked(handle, r.prompt_ids, STEPS, HeadMask(1, 1))


def test_long_prompt_is_cut_from_the_left_with_a_warning(llama):
    words = ("one two three four five six seven eight nine ten " * 7).split()  # 70 tokens, context 64
    r = trace(llama, " ".join(words), max_new_tokens=4)
    assert len(r.prompt_ids) == 60
    assert r.prompt_tokens == tuple(words[-60:])
    assert len(r.warnings) == 1 and "70 tokens" in r.warnings[0] and "last 60" in r.warnings[0]


def test_every_family_records_the_attention_of_a_plain_forward_pass(handle):
    """The traced attention at step 0 (read from the last query row only, where the layer keeps its
    fused kernel) equals the full pattern of a hooked forward pass over the prompt."""
    r = trace(handle, PROMPT, max_new_tokens=2)
    seen = {}
    fns = {(layer, "attn.pattern"): [lambda t, layer=layer: seen.__setitem__(layer, t.clone())]
           for layer in range(handle.arch.n_layers)}
    with torch.no_grad(), hooks(handle.model, handle.arch, fns):
        handle.model(torch.tensor([r.prompt_ids]))
    n = len(r.prompt_ids)
    for layer in range(handle.arch.n_layers):
        np.testing.assert_allclose(r.attention[0, layer, :, :n], seen[layer][0, :, -1].numpy(), atol=1e-5)
        np.testing.assert_allclose(r.attention[1, layer, :, :n + 1].sum(-1), 1.0, atol=1e-5)


def test_generation_stops_on_eos(tiny):
    free = trace(tiny.make_handle("llama"), PROMPT, max_new_tokens=STEPS)
    model = tiny.make_model("llama")
    model.generation_config.eos_token_id = free.generated_ids[2]  # the third token ends the run
    if free.generated_ids[2] in free.generated_ids[:2]:
        pytest.skip("the third token also appears earlier")  # pragma: no cover - fixed seed
    r = trace(tiny.make_handle("llama", model=model), PROMPT, max_new_tokens=STEPS)
    assert r.stopped_on_eos and not free.stopped_on_eos
    assert r.generated_ids == free.generated_ids[:3]
    assert r.step_activity.shape[0] == 3 and r.attention.shape[0] == 3
    assert r.fidelity.argmax_agreement == 1.0


def test_trace_without_attention(llama):
    with_attention = trace(llama, PROMPT, max_new_tokens=3, masks=["0.2"])
    without = trace(llama, PROMPT, max_new_tokens=3, masks=["0.2"], capture_attention=False)
    assert without.attention is None
    assert without.generated_ids == with_attention.generated_ids
    np.testing.assert_allclose(without.step_activity, with_attention.step_activity, rtol=1e-5, atol=1e-6)


def test_concurrent_traces_match_their_solo_runs(llama):
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(), ("0.1",), (HeadMask(1, 2, "attention"),), ("0.0", "1.3")]
    solo = [trace(llama, PROMPT, max_new_tokens=STEPS, masks=m) for m in jobs]
    assert len({r.step_activity.tobytes() for r in solo}) == len(jobs)  # the jobs really differ
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda m: trace(llama, PROMPT, max_new_tokens=STEPS, masks=m), jobs * 3))
    for i, r in enumerate(together):
        expected = solo[i % len(jobs)]
        assert r.generated_ids == expected.generated_ids
        np.testing.assert_allclose(r.step_activity, expected.step_activity, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.attention, expected.attention, atol=1e-6)


def test_fidelity_compares_logits_whatever_the_sampling(llama):
    """With a hot temperature the sampled tokens are often not the argmax; fidelity still reads 100%
    because it compares the pass's logits with the ones generation drew from, not with the token."""
    r = trace(llama, PROMPT, max_new_tokens=8, sampling=Sampling(temperature=5.0, seed=1))
    logits = torch.tensor(np.array([_logits_by_hand(llama, r.prompt_ids, r.generated_ids, i) for i in range(8)]))
    assert any(int(logits[i].argmax()) != t for i, t in enumerate(r.generated_ids))  # sampling left the argmax
    assert r.fidelity.argmax_agreement == 1.0
    assert r.fidelity.max_logit_diff < 1e-4


def _logits_by_hand(handle, prompt_ids, generated_ids, step):
    with torch.no_grad():
        return handle.model(torch.tensor([list(prompt_ids) + list(generated_ids[:step])])).logits[0, -1].numpy()


def test_sampled_and_model_probabilities(llama):
    """sampled: p under softmax(logits / T) over the top-k (what the token was drawn from);
    model: p under softmax(logits) over the whole vocabulary."""
    sampling = Sampling(temperature=0.7, top_k=5, seed=3)
    r = trace(llama, PROMPT, max_new_tokens=STEPS, sampling=sampling)
    for i, token in enumerate(r.generated_ids):
        logits = torch.tensor(_logits_by_hand(llama, r.prompt_ids, r.generated_ids, i)).double()
        top = torch.topk(logits, 5)
        assert token in top.indices.tolist()
        drawn = torch.softmax(top.values / 0.7, -1)[top.indices.tolist().index(token)]
        assert r.sampled_probs[i] == pytest.approx(float(drawn), abs=1e-5)
        assert r.model_probs[i] == pytest.approx(float(torch.softmax(logits, -1)[token]), abs=1e-5)
    assert r.sampled_probs != pytest.approx(r.model_probs, abs=1e-3)  # two different numbers


@pytest.mark.parametrize("level", ["projection", "attention", "both"])
def test_masks_are_verified_and_a_failed_mask_is_caught(llama, monkeypatch, level):
    ok = trace(llama, PROMPT, max_new_tokens=3, masks=[HeadMask(1, 2, level), HeadMask(0, 1, level)])
    assert ok.fidelity.masks_verified and ok.fidelity.unverified_masks == ()
    from synapse_core.hooks import masking

    monkeypatch.setattr(masking, "_zero_heads", lambda heads, dim: (lambda x: None))  # a mask that does nothing
    broken = trace(llama, PROMPT, max_new_tokens=3, masks=[HeadMask(1, 2, level), HeadMask(0, 1, level)])
    assert not broken.fidelity.masks_verified
    assert set(broken.fidelity.unverified_masks) == {"1.2", "0.1"}
    assert broken.fidelity.argmax_agreement == 1.0  # both runs share the broken mask: only this check sees it


def test_lineage_depth_counts_path_heads_that_carry_their_layer(llama):
    """Depth = path heads above DOMINANT_FACTOR even shares of their layer's activity, so it moves with
    the activity (it used to be n_layers + 1 whatever the input)."""
    from synapse_core.analysis.trace import thought_path

    n_layers, n_heads = llama.arch.n_layers, llama.arch.n_heads
    even = np.ones((n_layers, n_heads), dtype=np.float32)
    assert thought_path(llama, even).depth == 0
    peaked = even.copy()
    peaked[1, 3] = 10.0  # 10 / 13 of layer 1's activity
    path = thought_path(llama, peaked)
    assert path.depth == 1 and path.heads[1].head == 3
    assert path.heads[1].share == pytest.approx(10 / 13)
    assert path.share_threshold == pytest.approx(2 / n_heads)
    assert [e.kind for e in path.edges][0] == "ingress" and path.edges[-1].kind == "egress"
    assert path.edges[0].composition is None and all(0 <= e.composition <= 1 for e in path.edges[1:-1])


def test_the_fidelity_pass_runs_only_the_predicting_positions(llama, monkeypatch):
    """Heads are read while generating; the fidelity pass runs the predicting positions only (the prompt
    before its last token is the generation's KV cache) and agrees with a pass over the whole sequence."""
    from synapse_core.analysis import tracecapture

    lengths = []
    forward = llama.model.forward
    monkeypatch.setattr(llama.model, "forward", lambda *a, **k: lengths.append(k["input_ids"].shape[1]) or forward(*a, **k))
    r = trace(llama, PROMPT, max_new_tokens=STEPS)
    n_prompt = len(r.prompt_ids)
    assert lengths == [n_prompt] + [1] * (STEPS - 1) + [STEPS]  # prefill, one token a step, the fidelity pass
    monkeypatch.setattr(tracecapture, "_prefix", lambda cache, keep: None)  # the whole sequence instead
    whole = trace(llama, PROMPT, max_new_tokens=STEPS)
    assert lengths[-1] == n_prompt + STEPS - 1
    np.testing.assert_allclose(r.step_activity, whole.step_activity, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.attention, whole.attention, atol=1e-6)
    assert r.fidelity.max_logit_diff < 1e-4 and whole.fidelity.max_logit_diff < 1e-4


def test_generation_keeps_the_fused_attention_while_reading_the_heads(llama, monkeypatch):
    """The attention readers only take the predicting row, so no layer falls back to the explicit
    (eager) attention unless a mask edits the probabilities; the rows equal the eager ones."""
    from synapse_core.hooks import dispatch

    fast = trace(llama, PROMPT, max_new_tokens=STEPS)
    eager = dispatch.eager_attention
    calls = []
    monkeypatch.setattr(dispatch, "eager_attention", lambda *a, **k: calls.append(1) or eager(*a, **k))
    again = trace(llama, PROMPT, max_new_tokens=STEPS)
    assert calls == []
    np.testing.assert_array_equal(fast.attention, again.attention)
    masked = trace(llama, PROMPT, max_new_tokens=STEPS, masks=[HeadMask(1, 2, "attention")])
    assert calls and masked.attention[:, 1, 2].max() == 0.0  # the masked head's probabilities are edited: eager


def test_rows_rebuilt_from_the_cache_equal_the_rows_read_at_each_step(handle, monkeypatch):
    """Where attention is plain causal, each step's row is rebuilt after generation from its query and
    the cached keys; that equals reading the probabilities at every step."""
    from synapse_core.analysis import trace as trace_module
    from synapse_core.analysis.tracecapture import query_layers

    rebuilt = trace(handle, PROMPT, max_new_tokens=STEPS, masks=[HeadMask(1, 0, "attention")])
    monkeypatch.setattr(trace_module, "query_layers", lambda model, n: frozenset())
    read = trace(handle, PROMPT, max_new_tokens=STEPS, masks=[HeadMask(1, 0, "attention")])
    np.testing.assert_allclose(rebuilt.attention, read.attention, atol=2e-6)
    assert rebuilt.attention[:, 1, 0].max() == 0.0  # an attention-level mask's layer is read, edited, at each step
    # sliding-window layers (mistral; the first layer of qwen2, gemma2, gemma3 here) are read at each step
    sliding = {"mistral": {0, 1}, "qwen2": {0}, "gemma2": {0}, "gemma3_text": {0}}.get(handle.arch.family, set())
    assert query_layers(handle.model, handle.arch.n_layers) == frozenset(range(handle.arch.n_layers)) - sliding


def test_a_query_row_reader_cannot_edit(llama):
    from synapse_core.hooks.dispatch import HookError, hooks

    def edit(query, scaling, softcap):
        return query * 0

    edit.query_row = True
    with pytest.raises(HookError, match="cannot edit"), hooks(llama.model, llama.arch, {(0, "attn.pattern"): [edit]}):
        llama.model(input_ids=torch.tensor([[1, 2, 3]]))
