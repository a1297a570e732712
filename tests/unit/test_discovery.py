"""Discovery on tiny random-init models: attribution estimates, verification, pairs, the circuit
against random sets, edges, the store, the CLI, and bad input."""
from __future__ import annotations

import io
import itertools
import json
from contextlib import redirect_stdout
from math import comb

import numpy as np
import pytest
import torch

from synapse_core.analysis.attribution import attribute_heads, metric_values
from synapse_core.analysis.circuit import choose_pairs, circuit_edges, head_set_scores, pair_label, random_head_sets
from synapse_core.analysis.composition import composition_scores
from synapse_core.analysis.discovery import STAGES, discover, discovery_config, spearman
from synapse_core.arch.spec import HeadMask, HeadRef, Intervention
from synapse_core.cli import common as cli_common
from synapse_core.cli import main as cli
from synapse_core.common.errors import BadInput
from synapse_core.experiments.discoveries import run_discovery
from synapse_core.experiments.records import list_experiments, load_experiment
from synapse_core.experiments.store import ResultStore
from synapse_core.hooks.dispatch import hooks
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.metrics import resolve_target
from synapse_core.interventions.ops import forward_last
from synapse_core.interventions.promptset import PromptCase
from synapse_core.model.tokens import encode_prompt

PROMPT = "the cat sat on the mat and the dog ran to the"
TARGET, CONTRAST = "cat", "dog"
CASES = (PromptCase(PROMPT, TARGET, CONTRAST),
         PromptCase("a bird and a fish swam in the blue sea and the", "bird", "fish"))
SET_OF_FOUR = CASES + (PromptCase("the red cat and the blue dog sat on the mat and the", "cat", "dog"),
                       PromptCase("the sun and the moon were up in the sky and the", "sun", "moon"))


def zero(ref: HeadRef) -> Intervention:
    return Intervention(ref.layer, "attn.head", "zero", ref.head)


@pytest.fixture
def result(llama):
    config = discovery_config(llama, PROMPT, TARGET, CONTRAST, top_k_heads=3, max_pair_sweeps=3)
    return discover(llama, config)


# ---- ranking by attribution patching ------------------------------------------------------------


def _float64_llama(tiny, linear_last_layer: bool):
    model = tiny.make_model("llama", seed=3, dtype=torch.float64)
    if linear_last_layer:
        # no final norm and no last MLP: the logits are an affine function of the last layer's head outputs
        model.model.norm = torch.nn.Identity()
        torch.nn.init.zeros_(model.model.layers[-1].mlp.down_proj.weight)
    return tiny.make_handle("llama", model=model)


@pytest.mark.parametrize("metric", ["logit_diff", "log_prob"])
def test_estimate_equals_exact_effect_where_the_metric_is_linear_in_the_head_output(tiny, metric):
    handle = _float64_llama(tiny, linear_last_layer=True)
    ids, _ = encode_prompt(handle, PROMPT)
    target = resolve_target(handle, TARGET, CONTRAST)
    est = attribute_heads(handle, ids, target, metric, ()).estimates
    last = handle.arch.n_layers - 1
    exact = [ablate(handle, PROMPT, target, [zero(HeadRef(last, h))]).delta(metric) for h in range(handle.arch.n_heads)]
    if metric == "logit_diff":  # linear: exact to rounding
        assert np.allclose(est[last].numpy(), exact, atol=1e-9)
        assert min(abs(e) for e in exact) > 1e-3  # the heads do matter, so the match is not 0 == 0
    else:  # log-softmax is not linear: the estimate is first order only, but close and of the same sign
        assert np.all(np.sign(est[last].numpy()) == np.sign(exact))


def _logits64(handle, ids, fns) -> torch.Tensor:
    """Last-position logits (1, d_vocab) in the model's own float64 (forward_last rounds to float32)."""
    with torch.no_grad(), hooks(handle.model, handle.arch, fns):
        return handle.model(input_ids=ids).logits[:, -1]


@pytest.mark.parametrize("metric", ["logit_diff", "log_prob"])
def test_estimate_is_the_first_order_change_of_the_metric_for_every_head(tiny, metric):
    handle = _float64_llama(tiny, linear_last_layer=False)
    ids, _ = encode_prompt(handle, PROMPT)
    target = resolve_target(handle, TARGET, CONTRAST)
    att = attribute_heads(handle, ids, target, metric, ())
    clean = float(metric_values(_logits64(handle, ids, {}), target, metric)[0])
    assert clean == pytest.approx(att.clean, abs=1e-9)
    eps = 1e-3  # central differences; the norms round to float32 inside, so eps cannot be tiny

    def scaled(layer, head, factor):
        def fn(z):  # z (batch, pos, head, d_head)
            z = z.clone()
            z[:, :, head] *= factor
            return z

        return float(metric_values(_logits64(handle, ids, {(layer, "attn.z"): [fn]}), target, metric)[0])

    for layer, head in itertools.product(range(handle.arch.n_layers), range(handle.arch.n_heads)):
        # d/dt m(z - t z) at t = 0 is dm/dz . (0 - z): the estimate
        slope = (scaled(layer, head, 1 - eps) - scaled(layer, head, 1 + eps)) / (2 * eps)
        assert float(att.estimates[layer, head]) == pytest.approx(slope, rel=1e-3, abs=1e-3), (layer, head)


def test_masked_heads_get_no_estimate_and_are_never_candidates_or_random(llama):
    masks = (HeadMask(0, 1), HeadMask(1, 3, "attention"))
    config = discovery_config(llama, PROMPT, TARGET, CONTRAST, top_k_heads=3, masks=masks)
    r = discover(llama, config)
    masked = {m.ref for m in masks}
    assert r.estimates[0, 1] == 0 and r.estimates[1, 3] == 0
    assert not masked & {h.ref for h in r.candidates}
    assert not masked & {ref for s in r.circuit.random_sets for ref in s}
    assert r.masks == tuple(sorted(masks)) and len(r.candidates) == 8 - 2


# ---- verification ----------------------------------------------------------------------------


def test_verified_effects_equal_independent_single_head_ablations(llama, result):
    assert len(result.candidates) == 8  # every head of the tiny model is verified
    for h in result.candidates:
        alone = ablate(llama, PROMPT, TARGET, [zero(h.ref)], CONTRAST).delta("logit_diff")
        assert h.verified_effect == pytest.approx(alone, abs=1e-4)


def test_candidates_are_ordered_by_verified_effect_and_the_circuit_is_the_first_top_k(result):
    effects = [h.verified_effect for h in result.candidates]
    assert effects == sorted(effects)
    assert result.heads == result.candidates[:3]
    assert result.circuit.heads == tuple(sorted(h.ref for h in result.heads))
    assert sorted(h.estimate_rank for h in result.candidates) == list(range(1, 9))
    for h in result.candidates:
        assert h.estimated_effect == pytest.approx(float(result.estimates[h.layer, h.head]))


def test_spearman_rho_is_over_the_verified_heads(result):
    est = [h.estimated_effect for h in result.candidates]
    ver = [h.verified_effect for h in result.candidates]
    assert result.rho_heads == 8
    assert result.spearman_rho == pytest.approx(spearman(est, ver))


def test_spearman_ranks_with_ties_and_is_undefined_for_constants():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)  # ranks, not values
    assert spearman([1, 1, 2, 3], [5, 6, 7, 8]) == pytest.approx(np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1])
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [2, 1]) is None


# ---- pairs, circuit, random baseline -----------------------------------------------------------


def test_pairs_are_joint_ablations_against_the_sum_of_singles(llama, result):
    single = {h.ref: h.verified_effect for h in result.candidates}
    assert len(result.pairs) == 3 == comb(3, 2)
    assert len({(p.a, p.b) for p in result.pairs}) == 3
    for p in result.pairs:
        joint = ablate(llama, PROMPT, TARGET, [zero(p.a), zero(p.b)], CONTRAST).delta("logit_diff")
        assert p.joint_effect == pytest.approx(joint, abs=1e-4)
        assert p.sum_of_singles == pytest.approx(single[p.a] + single[p.b])
        assert p.interaction == pytest.approx(p.joint_effect - p.sum_of_singles)
        assert p.label == pair_label(p.joint_effect, single[p.a], single[p.b])


def test_pair_sweeps_stop_at_the_limit_strongest_first():
    heads = [HeadRef(0, h) for h in range(4)]
    effects = {heads[0]: -3.0, heads[1]: 0.1, heads[2]: -1.0, heads[3]: 0.5}
    pairs = choose_pairs(heads, effects, 2)
    assert pairs == [(heads[0], heads[2]), (heads[0], heads[3])]
    assert len(choose_pairs(heads, effects, 190)) == 6 and choose_pairs(heads, effects, 0) == []


@pytest.mark.parametrize("joint, a, b, label", [
    (-1.0, -1.0, -1.0, "redundant"),  # together no more than one of them
    (-3.0, -1.0, -1.0, "synergistic"),
    (-2.05, -1.0, -1.0, "additive"),
    (0.5, -1.0, -1.0, "redundant"),  # past zero
    (3.0, 1.0, 1.0, "synergistic"),  # positive effects compare the same way
    (1.0, 1.0, 1.0, "redundant"),
])
def test_pair_label(joint, a, b, label):
    assert pair_label(joint, a, b) == label


def test_circuit_effect_and_target_rate_equal_a_joint_ablation(llama, result):
    c = result.circuit
    both = ablate(llama, PROMPT, TARGET, [zero(r) for r in c.heads], CONTRAST)
    assert c.effect == pytest.approx(both.delta("logit_diff"), abs=1e-4)
    assert c.metric_before == pytest.approx(both.clean.logit_diff, abs=1e-4)
    assert c.target_rate_before == float(both.clean.top_token == TARGET)
    assert c.target_rate_after == float(both.intervened.top_token == TARGET)


def test_random_baseline_is_seeded_and_each_draw_is_a_joint_ablation(llama, result):
    c = result.circuit
    assert len(c.random_sets) == len(c.random_effects) == 20
    assert all(len(s) == len(set(s)) == 3 for s in c.random_sets)
    assert c.random_mean == pytest.approx(np.mean(c.random_effects))
    assert c.random_std == pytest.approx(np.std(c.random_effects))
    for s, effect in list(zip(c.random_sets, c.random_effects))[:3]:
        joint = ablate(llama, PROMPT, TARGET, [zero(r) for r in s], CONTRAST).delta("logit_diff")
        assert effect == pytest.approx(joint, abs=1e-4)
    again = discover(llama, discovery_config(llama, PROMPT, TARGET, CONTRAST, top_k_heads=3, max_pair_sweeps=3))
    assert again.circuit.random_sets == c.random_sets and again.circuit.random_effects == c.random_effects
    other = discover(llama, discovery_config(llama, PROMPT, TARGET, CONTRAST, top_k_heads=3, seed=1))
    assert other.circuit.random_sets != c.random_sets


def test_random_head_sets_draw_distinct_heads_from_the_pool():
    pool = [HeadRef(layer, head) for layer in range(3) for head in range(4)]
    sets = random_head_sets(pool, 5, 30, seed=7)
    assert sets == random_head_sets(list(reversed(pool)), 5, 30, seed=7)  # the pool's order does not matter
    assert all(len(set(s)) == 5 and set(s) <= set(pool) for s in sets) and len(set(sets)) > 20


def test_head_set_scores_batched_equal_one_pass_per_set(llama):
    ids, _ = encode_prompt(llama, PROMPT)
    target = resolve_target(llama, TARGET, CONTRAST)
    clean = forward_last(llama, ids, {})[0]
    sets = [(HeadRef(1, 0),), (HeadRef(0, 2), HeadRef(1, 1)), (HeadRef(1, 2), HeadRef(1, 3)), (HeadRef(0, 0),)]
    scores, passes = head_set_scores(llama, ids, sets, target, batch_rows=3)
    assert passes == 2
    for s, value in zip(sets, scores["logit_diff"]):
        assert float(value) == pytest.approx(ablate(llama, PROMPT, target, [zero(r) for r in s]).intervened.logit_diff,
                                             abs=1e-4)


def test_verdict_says_when_the_circuit_is_no_better_than_random(result):
    c = result.circuit
    assert c.sum_of_singles == pytest.approx(sum(h.verified_effect for h in result.heads))
    assert c.interacts == (c.effect * c.sum_of_singles < 0 and min(abs(c.effect), abs(c.sum_of_singles)) > c.random_std)
    assert c.beats_random == (-c.effect > 0 and -c.effect > -c.random_mean + 2 * c.random_std)
    assert c.verdict.startswith("no better than random") != c.beats_random


# ---- edges, prompt sets, progress, store ---------------------------------------------------------


def test_edges_join_heads_of_different_layers_weighted_by_max_composition(llama):
    heads = [HeadRef(0, 1), HeadRef(0, 3), HeadRef(1, 2)]
    edges = circuit_edges(llama.arch, heads)
    assert {(e.sender, e.receiver) for e in edges} == {(HeadRef(0, 1), HeadRef(1, 2)), (HeadRef(0, 3), HeadRef(1, 2))}
    full = composition_scores(llama.arch, 0, 1)
    for e in edges:
        parts = {k: float(full[k][e.sender.head, e.receiver.head]) for k in "qkv"}
        assert (e.q, e.k, e.v) == pytest.approx((parts["q"], parts["k"], parts["v"]), abs=1e-5)
        assert e.weight == pytest.approx(max(parts.values()), abs=1e-5) and e.kind == max(parts, key=parts.get)


def test_prompt_set_effects_are_means_with_their_spread(llama):
    config = discovery_config(llama, cases=CASES, top_k_heads=2, max_pair_sweeps=1, holdout=0)  # all prompts train
    both = discover(llama, config)
    singles = [discover(llama, discovery_config(llama, c.prompt, c.target, c.contrast, top_k_heads=2)) for c in CASES]
    assert both.metric == "logit_diff" and len(both.cases) == 2
    assert np.allclose(both.estimates, np.mean([s.estimates for s in singles], axis=0), atol=1e-6)
    assert np.allclose(both.estimate_std, np.std([s.estimates for s in singles], axis=0), atol=1e-6)
    for h in both.candidates:
        per = [next(x.verified_effect for x in s.candidates if x.ref == h.ref) for s in singles]
        assert h.verified_effect == pytest.approx(np.mean(per), abs=1e-5)
        assert h.verified_std == pytest.approx(np.std(per), abs=1e-5)
    assert max(h.verified_std for h in both.candidates) > 0
    assert both.clean == pytest.approx(np.mean([s.clean for s in singles]))
    assert both.circuit.target_rate_before in (0.0, 0.5, 1.0)


def test_prompt_set_without_contrasts_ranks_log_prob(llama):
    config = discovery_config(llama, cases=(PromptCase(PROMPT, TARGET), CASES[1]), top_k_heads=1, max_pair_sweeps=0,
                              holdout=0)
    assert config.metric == "log_prob"
    r = discover(llama, config)
    h = r.candidates[0]
    per = [ablate(llama, c.prompt, c.target, [zero(h.ref)]).delta("log_prob") for c in config.cases]
    assert h.verified_effect == pytest.approx(np.mean(per), abs=1e-4) and r.pairs == ()


def test_progress_reports_every_stage_in_order(llama):
    calls = []
    config = discovery_config(llama, cases=SET_OF_FOUR, top_k_heads=2, max_pair_sweeps=1)  # 2 train, 2 held out
    discover(llama, config, progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert [s for s in dict.fromkeys(stage for stage, _, _ in calls)] == list(STAGES)
    for stage in STAGES:
        mine = [(d, t) for s, d, t in calls if s == stage]
        assert mine[0] == (0, 2) and mine[-1] == (2, 2)


def test_same_request_twice_is_answered_from_the_store_and_masks_are_part_of_the_hash(llama, tmp_path):
    store = ResultStore(tmp_path)
    config = discovery_config(llama, PROMPT, TARGET, CONTRAST, top_k_heads=2, max_pair_sweeps=1)
    first = run_discovery(llama, config, store)
    second = run_discovery(llama, config, store)
    assert not first.from_cache and second.from_cache and first.hash == second.hash == config.hash
    assert second.result.heads == first.result.heads
    assert load_experiment(store, first.hash).result.circuit == first.result.circuit
    listed, problems = list_experiments(store, kind="discover")
    assert [e.hash for e in listed] == [first.hash] and not problems
    masked = discovery_config(llama, PROMPT, TARGET, CONTRAST, top_k_heads=2, max_pair_sweeps=1, masks=["0.0"])
    assert masked.hash != config.hash and masked.masks == (HeadMask(0, 0),)
    assert not run_discovery(llama, masked, store).from_cache


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_k_heads=0), "top_k_heads 0 is out of range: choose 1-20"),
    (dict(top_k_heads=21), "top_k_heads 21 is out of range"),
    (dict(top_k_heads=9), "top_k_heads 9 is more than the 8 unmasked heads"),
    (dict(max_pair_sweeps=191), "max_pair_sweeps 191 is out of range: choose 0-190"),
    (dict(max_pair_sweeps=-1), "max_pair_sweeps -1 is out of range"),
    (dict(baseline_draws=19), "baseline_draws 19 is out of range: choose 20-"),
    (dict(target="zebra"), "target 'zebra' is not in the model's vocabulary"),
    (dict(contrast="unicorn"), "contrast 'unicorn' is not in the model's vocabulary"),
    (dict(prompt="  "), "the prompt is empty"),
    (dict(target=""), "the target token is empty"),
    (dict(contrast="cat"), "are the same token"),
    (dict(masks=["4.0"]), "layer 4 does not exist"),
])
def test_bad_input_names_the_bad_value(llama, kwargs, message):
    args = dict(prompt=PROMPT, target=TARGET, contrast=CONTRAST) | kwargs
    with pytest.raises(BadInput, match=message.replace("(", r"\(")):
        discovery_config(llama, **args)


def test_a_stored_discovery_is_refused_for_other_weights(llama, tiny, tmp_path):
    config = discovery_config(llama, PROMPT, TARGET, CONTRAST)
    with pytest.raises(BadInput, match="was made with"):
        run_discovery(tiny.make_handle("llama", seed=5), config, ResultStore(tmp_path))


# ---- CLI --------------------------------------------------------------------------------------


def _run_cli(monkeypatch, llama, *argv):
    monkeypatch.setattr(cli_common, "load", lambda args: llama)
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["discover", *argv])
    return code, out.getvalue()


def test_cli_prints_the_issue_json_shape(monkeypatch, llama, tmp_path):
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path))
    code, out = _run_cli(monkeypatch, llama, "--prompt", PROMPT, "--target", TARGET, "--contrast", CONTRAST,
                         "--top-k", "2", "--max-pair-sweeps", "1", "--no-masks", "--json")
    assert code == 0
    payload = json.loads(out)
    assert {"heads", "pairs", "circuit_effect", "random_baseline", "target_rate", "rank_seconds", "seconds",
            "experiment", "spearman_rho", "edges"} <= set(payload)
    assert [set(h) >= {"layer", "head", "estimated_effect", "verified_effect"} for h in payload["heads"]] == [True] * 2
    assert set(payload["random_baseline"]) >= {"mean", "std"} and set(payload["target_rate"]) == {"before", "after"}
    assert len(payload["pairs"]) == 1 and payload["experiment"] == payload["experiment"].lower()
    code, again = _run_cli(monkeypatch, llama, "--prompt", PROMPT, "--target", TARGET, "--contrast", CONTRAST,
                           "--top-k", "2", "--max-pair-sweeps", "1", "--no-masks", "--json")
    assert json.loads(again)["from_cache"] and json.loads(again)["experiment"] == payload["experiment"]


def test_cli_reads_a_prompts_file(monkeypatch, llama, tmp_path):
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path))
    path = tmp_path / "cases.txt"
    path.write_text("\n".join(f"{c.prompt} | {c.target} | {c.contrast}" for c in CASES))
    code, out = _run_cli(monkeypatch, llama, "--prompts-file", str(path), "--top-k", "1", "--max-pair-sweeps", "0",
                         "--no-masks", "--json")
    assert code == 0 and len(json.loads(out)["prompts"]) == 2


def test_cli_bad_top_k_exits_2(monkeypatch, llama, capsys):
    code, out = _run_cli(monkeypatch, llama, "--prompt", PROMPT, "--target", TARGET, "--top-k", "30", "--no-masks")
    assert code == 2 and out == ""
    assert "top_k_heads 30 is out of range" in capsys.readouterr().err


def test_verified_effects_take_the_clean_run_from_their_own_batched_pass(tiny, monkeypatch):
    """A head whose output projection is zero changes nothing: its verified effect is exactly 0,
    and the clean metric comes from the batched passes, whatever the attribution pass computed."""
    import dataclasses

    import synapse_core.analysis.discovery as discovery

    handle = tiny.make_handle("llama")
    with torch.no_grad():
        handle.arch.out_proj[1].weight[:, 3 * tiny.D_HEAD:4 * tiny.D_HEAD] = 0  # head 1.3 writes nothing
    shifted = lambda *a, **k: (lambda att: dataclasses.replace(  # noqa: E731
        att, clean=att.clean + 1.0, clean_logits=att.clean_logits + torch.arange(att.clean_logits.numel())))(
        attribute_heads(*a, **k))
    monkeypatch.setitem(discovery.RANKINGS, "atp", (shifted, "shifted"))
    r = discover(handle, discovery_config(handle, PROMPT, TARGET, CONTRAST, top_k_heads=2, verify_heads=8))
    by_name = {h.ref: h for h in r.candidates}
    assert by_name[HeadRef(1, 3)].verified_effect == 0.0
    clean = ablate(handle, PROMPT, TARGET, [zero(HeadRef(1, 3))], CONTRAST).clean.logit_diff
    assert r.clean == pytest.approx(clean, abs=1e-5) and r.circuit.metric_before == pytest.approx(clean, abs=1e-5)


# ---- judged out of sample; interacting heads ------------------------------------------------------


def test_split_cases_holds_out_a_seeded_share_and_keeps_one_to_train():
    from synapse_core.analysis.discovery import split_cases

    assert split_cases(1, 0.5, 0) == ((0,), ())
    assert split_cases(5, 0.0, 0) == ((0, 1, 2, 3, 4), ())
    train, held = split_cases(10, 0.5, 3)
    assert len(held) == 5 and sorted(train + held) == list(range(10)) and (train, held) == split_cases(10, 0.5, 3)
    assert split_cases(10, 0.5, 4) != (train, held)
    assert len(split_cases(2, 0.9, 0)[0]) == 1  # never everything held out


def test_a_prompt_set_is_discovered_on_a_training_split_and_judged_on_the_held_out_prompts(llama):
    config = discovery_config(llama, cases=SET_OF_FOUR, top_k_heads=2, max_pair_sweeps=1)
    r = discover(llama, config)
    train, held = r.circuit.prompts, r.held_out.prompts
    assert len(train) == len(held) == 2 and sorted(train + held) == [0, 1, 2, 3]
    # ranking used the training prompts only
    alone = [attribute_heads(llama, encode_prompt(llama, SET_OF_FOUR[i].prompt)[0],
                             resolve_target(llama, SET_OF_FOUR[i].target, SET_OF_FOUR[i].contrast), "logit_diff")
             for i in train]
    assert np.allclose(r.estimates, np.mean([a.estimates.numpy() for a in alone], axis=0), atol=1e-5)
    # the held-out judgement is a real joint ablation of the circuit on the held-out prompts
    joint = [ablate(llama, SET_OF_FOUR[i].prompt, SET_OF_FOUR[i].target, [zero(ref) for ref in r.circuit.heads],
                    SET_OF_FOUR[i].contrast).delta("logit_diff") for i in held]
    assert r.held_out.effect == pytest.approx(np.mean(joint), abs=1e-4)
    assert r.held_out.heads == r.circuit.heads and r.held_out.random_sets == r.circuit.random_sets
    assert not r.in_sample_only and "held-out prompt(s): out of sample" in r.evaluation
    out = r.to_json()["evaluation"]
    assert out["in_sample_only"] is False and out["held_out"]["prompts"] == list(held)
    assert out["held_out"]["effect"] == r.held_out.effect and out["in_sample"]["prompts"] == list(train)


def test_one_prompt_says_plainly_that_its_judgement_is_in_sample(result):
    assert result.in_sample_only and result.held_out is None
    assert result.evaluation.startswith("in-sample only: the circuit was chosen and judged on this prompt")
    out = result.to_json()["evaluation"]
    assert out["in_sample_only"] is True and out["held_out"] is None and out["statement"] == result.evaluation


def test_a_circuit_that_raises_the_metric_though_each_head_lowers_it_is_called_interacting():
    from synapse_core.analysis.baseline import verdict

    beats, interacts, words = verdict(+3.96, -0.4, 0.3, 3, 20, "logit_diff", sum_of_singles=-2.1)
    assert not beats and interacts
    assert words.startswith("the heads interact: ablated together these 3 heads raise logit_diff by 3.96, the "
                            "opposite of what they do alone")
    assert "no better than random" not in words
    assert verdict(-3.0, -0.4, 0.3, 3, 20, "logit_diff", sum_of_singles=-2.1)[:2] == (True, False)
    assert verdict(+0.1, -0.4, 0.3, 3, 20, "logit_diff", sum_of_singles=-2.1)[1] is False  # within the noise
