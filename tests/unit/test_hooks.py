"""The hook dispatcher: parity with a plain forward pass, captured tensors, clean removal, nesting
and thread isolation."""
import copy
import threading

import pytest
import torch

from synapse_core.arch.spec import HeadMask
from synapse_core.hooks.dispatch import SITES, HookError, active_handle_count, hooks
from synapse_core.hooks.masking import mask_fns, merge_fns


def _reference_logits(model, ids):
    """Logits of the untouched Hugging Face model.

    gemma2 caps attention logits (softcap); transformers' default SDPA path silently drops the cap
    while its eager path applies it, as the model was trained. Synapse applies it, so the eager
    path is the reference there.
    """
    if getattr(model.config, "attn_logit_softcapping", None):
        model.set_attn_implementation("eager")
    with torch.no_grad():
        return model(ids).logits


def _every_site(n_layers, fn_for):
    return {(layer, site): [fn_for(layer, site)] for layer in range(n_layers) for site in SITES}


def test_parity_with_a_plain_forward_pass(family, tiny):
    model = tiny.make_model(family)
    ids = tiny.sample_ids()
    expected = _reference_logits(model, ids)
    handle = tiny.make_handle(family, model=model)
    captured = {}

    def capture(layer, site):
        return lambda t: captured.__setitem__((layer, site), t.clone())

    with torch.no_grad():
        with hooks(model, handle.arch, _every_site(handle.arch.n_layers, capture)):
            with_capture = model(ids).logits
        with hooks(model, handle.arch, _every_site(handle.arch.n_layers, lambda layer, site: lambda t: None)):
            with_none = model(ids).logits
        idle = model(ids).logits
    assert len(captured) == handle.arch.n_layers * len(SITES)  # every site really ran
    torch.testing.assert_close(with_capture, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_none, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(idle, expected, atol=1e-5, rtol=1e-5)


def test_softcap_is_applied_like_eager_attention(tiny):
    """gemma2 with a cap small enough to matter: Synapse matches the eager path, not SDPA's."""
    cfg = tiny.config_for("gemma2")
    cfg.attn_logit_softcapping = 0.5
    model = tiny.make_model("gemma2", config=cfg)
    ids = tiny.sample_ids()
    with torch.no_grad():
        sdpa = model(ids).logits
    eager = _reference_logits(model, ids)
    assert (sdpa - eager).abs().max() > 1e-3  # the cap really changes the logits here
    tiny.make_handle("gemma2", model=model)  # prepare() routes attention through Synapse
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, eager, atol=1e-5, rtol=1e-5)


def test_captured_shapes_follow_the_documented_layout(handle, tiny):
    arch = handle.arch
    ids = tiny.sample_ids(batch=2, pos=9)
    shapes = {}
    fns = _every_site(arch.n_layers, lambda layer, site: lambda t: shapes.__setitem__((layer, site), tuple(t.shape)))
    with torch.no_grad(), hooks(handle.model, arch, fns):
        handle.model(ids)
    for layer in range(arch.n_layers):
        assert shapes[(layer, "attn.z")] == (2, 9, arch.n_heads, arch.d_head)
        assert shapes[(layer, "attn.pattern")] == (2, arch.n_heads, 9, 9)
        assert shapes[(layer, "attn.out")] == (2, 9, arch.d_model)
        assert shapes[(layer, "mlp.in")] == (2, 9, arch.d_model)  # OPT's flat (batch * pos) input too
        assert shapes[(layer, "mlp.out")] == (2, 9, arch.d_model)
        assert shapes[(layer, "resid.post")] == (2, 9, arch.d_model)


def test_mlp_out_replacement_reaches_the_residual_stream(handle, tiny):
    """Zeroing the MLP's output at the last position changes only the last position's logits."""
    arch, ids = handle.arch, tiny.sample_ids()

    def zero_last(t):  # (batch, pos, d_model)
        t = t.clone()
        t[:, -1] = 0
        return t

    with torch.no_grad():
        plain = handle.model(ids).logits
        with hooks(handle.model, arch, {(arch.n_layers - 1, "mlp.out"): [zero_last]}):
            edited = handle.model(ids).logits
    torch.testing.assert_close(edited[:, :-1], plain[:, :-1], atol=1e-6, rtol=0)
    assert (edited[:, -1] - plain[:, -1]).abs().max() > 1e-3


def test_patterns_are_causal_distributions(handle, tiny):
    arch = handle.arch
    patterns = {}
    fns = {(layer, "attn.pattern"): [lambda t, layer=layer: patterns.__setitem__(layer, t.clone())]
           for layer in range(arch.n_layers)}
    with torch.no_grad(), hooks(handle.model, arch, fns):
        handle.model(tiny.sample_ids())
    for layer, p in patterns.items():
        assert p.shape[1] == arch.n_heads  # query heads, also under grouped-query attention
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]), atol=1e-5, rtol=0)
        assert torch.all(p >= 0)
        assert torch.all(torch.triu(p, diagonal=1) == 0)


def test_gqa_pattern_has_one_row_per_query_head(tiny):
    handle = tiny.make_handle("llama")
    assert handle.arch.n_kv_heads < handle.arch.n_heads
    seen = []
    with torch.no_grad(), hooks(handle.model, handle.arch, {(0, "attn.pattern"): [seen.append]}):
        handle.model(tiny.sample_ids())
    p = seen[0]  # (batch, head, q_pos, k_pos)
    assert p.shape[1] == 4
    # heads sharing a key/value head still have their own queries, hence their own patterns
    assert not torch.allclose(p[:, 0], p[:, 1])


def _hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hook_survives_a_body_that_raises(llama, tiny):
    model, arch = llama.model, llama.arch
    before = _hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        with hooks(model, arch, mask_fns((HeadMask(0, 1),))):
            assert active_handle_count(model) > 0
            assert _hook_counts(model) > before
            raise RuntimeError("boom")
    assert active_handle_count(model) == 0
    assert _hook_counts(model) == before
    # and the model runs as if nothing had happened
    ids = tiny.sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, _reference_logits(tiny.make_model("llama"), ids),
                                   atol=1e-5, rtol=1e-5)


def test_bad_site_or_layer_installs_nothing(llama):
    with pytest.raises(ValueError, match="attn.q"):
        with hooks(llama.model, llama.arch, {(0, "attn.q"): [lambda t: None]}):
            pass
    with pytest.raises(ValueError, match="layer 5"):
        with hooks(llama.model, llama.arch, {(5, "attn.z"): [lambda t: None]}):
            pass
    assert active_handle_count(llama.model) == 0


def test_nested_blocks_add_to_the_outer_block_and_do_not_leak(llama, tiny):
    model, arch, ids = llama.model, llama.arch, tiny.sample_ids()
    outer_fns, inner_fns = mask_fns((HeadMask(0, 1),)), mask_fns((HeadMask(1, 2),))
    with torch.no_grad():
        plain = model(ids).logits
        with hooks(model, arch, inner_fns):
            inner_alone = model(ids).logits
        with hooks(model, arch, mask_fns((HeadMask(0, 1), HeadMask(1, 2)))):
            both = model(ids).logits
        with hooks(model, arch, outer_fns):
            outer_before = model(ids).logits
            count = active_handle_count(model)
            with hooks(model, arch, inner_fns):
                inner = model(ids).logits
                assert active_handle_count(model) == count  # one set of dispatchers, shared
            outer_after = model(ids).logits
            assert active_handle_count(model) == count
        assert active_handle_count(model) == 0
        after = model(ids).logits
    assert (outer_before - plain).abs().max() > 1e-3
    assert (inner - inner_alone).abs().max() > 1e-3  # the outer block's mask still holds inside
    torch.testing.assert_close(inner, both, rtol=0, atol=1e-6)  # outer and inner functions together
    torch.testing.assert_close(outer_after, outer_before, rtol=0, atol=0)
    torch.testing.assert_close(after, plain, rtol=0, atol=0)


def test_functions_run_in_order_and_replacements_chain(llama, tiny):
    seen = []
    fns = {(0, "attn.out"): [lambda t: t * 2, lambda t: seen.append(t.clone()), lambda t: t + 1,
                             lambda t: seen.append(t.clone())]}
    plain = {}
    with torch.no_grad():
        with hooks(llama.model, llama.arch, {(0, "attn.out"): [lambda t: plain.setdefault("x", t.clone())]}):
            llama.model(tiny.sample_ids())
        with hooks(llama.model, llama.arch, fns):
            llama.model(tiny.sample_ids())
    torch.testing.assert_close(seen[0], plain["x"] * 2)
    torch.testing.assert_close(seen[1], plain["x"] * 2 + 1)


def test_threads_see_only_their_own_masks(tiny):
    handle = tiny.make_handle("llama")
    model, arch = handle.model, handle.arch
    ids = tiny.sample_ids()
    jobs = {"a": (HeadMask(0, 1),), "b": (HeadMask(1, 3, "attention"),), "none": ()}

    def run(masks):
        with torch.no_grad(), hooks(model, arch, mask_fns(masks)):
            return model(ids).logits.clone()

    alone = {name: run(masks) for name, masks in jobs.items()}
    assert (alone["a"] - alone["b"]).abs().max() > 1e-3
    assert (alone["a"] - alone["none"]).abs().max() > 1e-3

    rounds = 8
    barrier = threading.Barrier(len(jobs))
    results = {name: [] for name in jobs}
    errors = []

    def meet(t):  # every thread waits here mid-forward, inside its hooks block: the runs overlap
        barrier.wait(timeout=30)

    def run_together(masks):
        fns = merge_fns({(0, "resid.post"): [meet]}, mask_fns(masks))
        with torch.no_grad(), hooks(model, arch, fns):
            return model(ids).logits.clone()

    def worker(name):
        try:
            for _ in range(rounds):
                barrier.wait(timeout=30)
                results[name].append(run_together(jobs[name]))
        except BaseException as exc:  # reported below, so a failure in a thread fails the test
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for name in jobs:
        assert len(results[name]) == rounds
        for got in results[name]:
            torch.testing.assert_close(got, alone[name], rtol=0, atol=1e-6)
    assert active_handle_count(model) == 0


_ATTENTION_MASK = mask_fns((HeadMask(1, 2, level="attention"),))


def test_attention_masks_refuse_a_model_whose_attention_bypasses_synapse(tiny):
    handle = tiny.make_handle("llama")
    handle.model.set_attn_implementation("sdpa")
    with pytest.raises(HookError, match="'sdpa', not Synapse's attention function"):
        with hooks(handle.model, handle.arch, _ATTENTION_MASK):
            pass
    assert active_handle_count(handle.model) == 0
    with torch.no_grad(), hooks(handle.model, handle.arch, mask_fns((HeadMask(1, 2),))):
        handle.model(tiny.sample_ids())  # projection-level masks do not need the attention function


def test_pattern_capture_refuses_a_copy_or_a_wrapper(tiny):
    handle = tiny.make_handle("llama")
    capture = {(0, "attn.pattern"): [lambda p: None]}
    clone = copy.deepcopy(handle.model)
    from synapse_core.arch.adapters import discover

    for model, arch in ((clone, discover(clone)), (clone, handle.arch)):
        with pytest.raises(HookError, match="not prepared as part of this model"):
            with hooks(model, arch, capture):
                pass

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    with pytest.raises(HookError, match="not prepared as part of this model"):
        with hooks(Wrapper(handle.model), handle.arch, capture):
            pass


def test_a_read_only_pattern_function_may_not_edit(llama, tiny):
    def edits(p):
        return p * 0

    edits.last_row = True
    with pytest.raises(HookError, match="promises to only read"):
        with torch.no_grad(), hooks(llama.model, llama.arch, {(0, "attn.pattern"): [edits]}):
            llama.model(tiny.sample_ids())
    assert active_handle_count(llama.model) == 0


def test_attn_out_and_mlp_out_are_what_the_block_writes_into_the_residual_stream(handle, tiny):
    """resid.post(L) = resid.post(L - 1) + attn.out(L) + mlp.out(L) in every family, Gemma 2 and 3's
    post-norms included: steering or mean-ablating these sites edits exactly what is added."""
    seen = {}
    fns = {(layer, site): [lambda t, k=(layer, site): seen.__setitem__(k, t.clone())]
           for layer in range(handle.arch.n_layers) for site in ("attn.out", "mlp.out", "resid.post")}
    with torch.no_grad(), hooks(handle.model, handle.arch, fns):
        handle.model(tiny.sample_ids())
    written = seen[(1, "attn.out")] + seen[(1, "mlp.out")]
    torch.testing.assert_close(seen[(1, "resid.post")], seen[(0, "resid.post")] + written, atol=1e-5, rtol=1e-5)


# the norm each family applies to the residual stream before its MLP (read from the model, not the adapter)
_NORM_BEFORE_MLP = {"gemma2": "pre_feedforward_layernorm", "gemma3_text": "pre_feedforward_layernorm",
                    "gpt2": "ln_2", "opt": "final_layer_norm"}


def test_mlp_in_is_the_norm_of_the_residual_stream_the_mlp_reads(handle, tiny):
    """mlp.in(1) = norm(resid.post(0) + attn.out(1)), or norm(resid.post(0)) in GPT-NeoX's parallel
    block, where the MLP reads the block's input: computed by hand from the block's own norm."""
    model, arch = handle.model, handle.arch
    seen = {}
    fns = {(layer, site): [lambda t, k=(layer, site): seen.__setitem__(k, t.clone())]
           for layer, site in ((0, "resid.post"), (1, "attn.out"), (1, "mlp.in"))}
    with torch.no_grad(), hooks(model, arch, fns):
        model(tiny.sample_ids())
    block = arch.layers[1]
    parallel = getattr(model.config, "use_parallel_residual", False)
    resid = seen[(0, "resid.post")] if parallel else seen[(0, "resid.post")] + seen[(1, "attn.out")]
    norm = getattr(block, _NORM_BEFORE_MLP.get(handle.arch.family, "post_attention_layernorm"))
    with torch.no_grad():
        expected = norm(resid)
    assert seen[(1, "mlp.in")].shape == resid.shape
    torch.testing.assert_close(seen[(1, "mlp.in")], expected, atol=1e-5, rtol=1e-5)
    assert (seen[(1, "mlp.in")] - resid).abs().max() > 1e-2  # the norm really changed it


def test_mlp_in_replacement_changes_the_mlp_output(handle, tiny):
    """A no-op mlp.in function leaves the logits as they were; doubling the MLP's input at the last
    position changes that position's MLP output and logits, and no earlier position's."""
    model, arch, ids = handle.model, handle.arch, tiny.sample_ids()
    last = arch.n_layers - 1

    def double_last(t):  # (batch, pos, d_model)
        t = t.clone()
        t[:, -1] *= 2
        return t

    outs = {}

    def grab(name):
        return lambda t: outs.__setitem__(name, t.clone())

    with torch.no_grad():
        plain = model(ids).logits
        with hooks(model, arch, {(last, "mlp.in"): [lambda t: None], (last, "mlp.out"): [grab("plain")]}):
            noop = model(ids).logits
        with hooks(model, arch, {(last, "mlp.in"): [double_last], (last, "mlp.out"): [grab("edited")]}):
            edited = model(ids).logits
    torch.testing.assert_close(noop, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(outs["edited"][:, :-1], outs["plain"][:, :-1], atol=1e-6, rtol=0)
    assert (outs["edited"][:, -1] - outs["plain"][:, -1]).abs().max() > 1e-3
    torch.testing.assert_close(edited[:, :-1], plain[:, :-1], atol=1e-6, rtol=0)
    assert (edited[:, -1] - plain[:, -1]).abs().max() > 1e-3
