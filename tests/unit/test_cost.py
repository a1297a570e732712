"""The cost of a quarantine on tiny models: standard text scoring, batched capability prompts, the
identities of a report that adds nothing, stored reports, and bad input."""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ablation_models import WORDS, tiny_handle

from synapse_core.analysis.capabilities import Capability, default_capabilities, next_token_logits, parse_capabilities
from synapse_core.analysis.cost import cost_config, cost_report
from synapse_core.analysis.perplexity import (
    MIN_WINDOW,
    TextDocs,
    TextScore,
    bootstrap,
    file_docs,
    score_text,
    text_docs,
    windows,
)
from synapse_core.arch.spec import HeadMask
from synapse_core.common.errors import BadInput
from synapse_core.experiments import costs
from synapse_core.experiments.records import export_csv, export_json, list_experiments
from synapse_core.experiments.store import ResultStore
from synapse_core.hooks.dispatch import hooks
from synapse_core.hooks.masking import mask_fns
from synapse_core.interventions.ops import forward_last
from synapse_core.interventions.promptset import PromptCase

WINDOW = 16
CAPS = (Capability("capitals", "the capital of France is the city of", "Paris"),
        Capability("capitals", "the capital of", "France"),
        Capability("stories", "Mary gave a drink to", "John"),
        Capability("stories", "the old king sat on the big red", "tower"),
        Capability("stories", "he", "said"))


def _text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _docs(handle, sizes=(70, 40, 33)) -> TextDocs:
    docs = tuple(tuple(handle.tokenizer(_text(n, i)).input_ids) for i, n in enumerate(sizes))
    return TextDocs("words", "d" * 16, docs)


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "results")
    yield s
    s.close()


def test_windows_are_consecutive_and_a_last_window_under_nine_tokens_is_dropped():
    doc = tuple(range(2 * WINDOW + MIN_WINDOW - 1))  # two whole windows and 8 tokens
    assert [w for _, w in windows([doc], WINDOW)] == [doc[:WINDOW], doc[WINDOW:2 * WINDOW]]
    doc = tuple(range(2 * WINDOW + MIN_WINDOW))
    assert [len(w) for _, w in windows([doc, doc[:5]], WINDOW)] == [WINDOW, WINDOW, MIN_WINDOW]
    with pytest.raises(BadInput, match="window 4"):
        windows([doc], 4)


def test_text_score_is_the_standard_perplexity_with_and_without_masks():
    handle = tiny_handle("llama")
    docs = _docs(handle)
    masks = (HeadMask(0, 1), HeadMask(1, 2, "attention"))
    for m in ((), masks):
        score = score_text(handle, docs, WINDOW, m)
        total, count = 0.0, 0
        with torch.inference_mode(), hooks(handle.model, handle.arch, mask_fns(m)):
            for _, piece in windows(docs.documents, WINDOW):  # one plain forward pass a window
                ids = torch.tensor([piece])
                logits = handle.model(input_ids=ids).logits[0, :-1]
                total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
                count += len(piece) - 1
        assert score.predicted.sum() == count
        assert score.mean_ce == pytest.approx(total / count, rel=1e-5)
        assert score.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert score_text(handle, docs, WINDOW, masks).mean_ce != pytest.approx(score_text(handle, docs, WINDOW).mean_ce)


def test_batched_capability_logits_equal_one_forward_pass_per_prompt():
    handle = tiny_handle("llama")
    masks = (HeadMask(1, 0),)
    prompts = [c.prompt for c in CAPS]
    batched = next_token_logits(handle, prompts, masks)
    for p, row in zip(prompts, batched):
        alone = forward_last(handle, handle.tokenizer(p, return_tensors="pt").input_ids, mask_fns(masks))[0]
        torch.testing.assert_close(row, alone, atol=1e-5, rtol=1e-5)


def test_a_report_that_adds_nothing_reads_zero_change_kl_0_and_no_flips():
    handle = tiny_handle("llama")
    docs = _docs(handle)
    in_force = (HeadMask(0, 3),)
    for heads in ([], ["0.3"]):  # nothing, or a head already in force
        config = cost_config(handle, heads, in_force, docs, WINDOW, CAPS, [PromptCase(CAPS[0].prompt, "Paris")])
        report = cost_report(handle, config, docs)
        assert report.text.perplexity_after == report.text.perplexity_before
        assert report.text.perplexity_change == 0.0 and report.text.perplexity_interval == (0.0, 0.0)
        assert report.flipped == () and all(g.mean_kl == 0.0 and g.worst_kl == 0.0 for g in report.groups)
        assert all(g.agreement == 1.0 and g.accuracy_before == g.accuracy_after for g in report.groups)
        assert report.targets[0].prob_before == report.targets[0].prob_after
        assert "0 of 5 capability prompts change answer" in report.verdict()


def test_a_report_of_heads_measures_the_masked_model_against_the_one_in_force():
    handle = tiny_handle("llama")
    docs = _docs(handle)
    in_force = (HeadMask(0, 3),)
    config = cost_config(handle, ["0.0", "0.1", "1.1", "1.2"], in_force, docs, WINDOW, CAPS,
                         [PromptCase(CAPS[0].prompt, "Paris", "London")], level="both")
    report = cost_report(handle, config, docs)
    after = tuple(sorted(set(in_force) | {HeadMask(0, 0, "both"), HeadMask(0, 1, "both"), HeadMask(1, 1, "both"),
                                          HeadMask(1, 2, "both")}))
    assert config.added == after
    assert report.text.perplexity_before == pytest.approx(score_text(handle, docs, WINDOW, in_force).perplexity)
    assert report.text.perplexity_after == pytest.approx(score_text(handle, docs, WINDOW, after).perplexity)
    lo, hi = report.text.perplexity_interval
    assert report.text.bootstrap_unit == "document" and lo <= report.text.perplexity_change <= hi
    before = next_token_logits(handle, [c.prompt for c in CAPS], in_force).argmax(-1)
    masked = next_token_logits(handle, [c.prompt for c in CAPS], after).argmax(-1)
    changed = [c.prompt for c, b, a in zip(CAPS, before, masked) if b != a]
    assert [f.prompt for f in report.flipped] == changed and changed
    assert sum(g.agreement * g.prompts for g in report.groups) == pytest.approx(len(CAPS) - len(changed))
    assert max(g.worst_kl for g in report.groups) > 0
    target = report.targets[0]
    assert target.prob_before != target.prob_after and target.logit_diff_before is not None
    assert report.to_json()["perplexity_before"] == report.text.perplexity_before


def test_bootstrap_of_a_uniform_shift_is_that_shift():
    before = TextScore(16, np.array([0, 0, 1, 2]), np.array([10.0, 20.0, 30.0, 5.0]), np.array([15, 15, 15, 8]))
    after = TextScore(16, before.doc_of, before.ce_sum + 0.5 * before.predicted, before.predicted)
    unit, ce, ppl = bootstrap(before, after, 200)
    assert unit == "document"
    assert ce == pytest.approx((0.5, 0.5)) and ppl == pytest.approx((math.expm1(0.5),) * 2)


def test_the_shipped_capability_set_has_120_prompts_in_six_groups():
    caps = default_capabilities()
    groups = {c.group for c in caps}
    assert len(caps) == 120 and len(groups) == 6
    assert {"facts and capitals", "code", "instructions"} <= groups
    assert all(c.expected and c.prompt for c in caps)


def test_bad_prompt_sets_texts_and_heads_are_refused_by_name(tmp_path):
    with pytest.raises(BadInput, match=r"line 2 .*no expected answer"):
        parse_capabilities("[g]\nthe capital of France is\n")
    with pytest.raises(BadInput, match="line 1 .*no expected answer"):
        parse_capabilities('the capital of | ""')
    handle = tiny_handle("llama")
    with pytest.raises(BadInput, match="head 7 does not exist|7"):
        cost_config(handle, ["1.7"], (), None, WINDOW, CAPS)
    with pytest.raises(BadInput, match="window 128 is longer than the model's context of 64 tokens"):
        cost_config(handle, ["1.1"], (), None, 128, CAPS)
    with pytest.raises(BadInput, match="shorter than one context of 16 tokens"):
        score_text(handle, text_docs(handle, "the city of Paris"), WINDOW)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(BadInput, match="empty.txt.*empty"):
        file_docs(handle, empty)
    with pytest.raises(BadInput, match="cannot read the text file .*missing.txt"):
        file_docs(handle, tmp_path / "missing.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"the city \xff\xfe")
    with pytest.raises(BadInput, match="not UTF-8"):
        file_docs(handle, binary)


def test_a_report_is_a_stored_experiment_and_the_text_before_is_scored_once(store, monkeypatch):
    handle = tiny_handle("llama")
    docs = _docs(handle)
    calls = []
    real = costs.score_text
    monkeypatch.setattr(costs, "score_text", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    prompt_calls = []
    real_logits = costs.next_token_logits  # the prompts' logits, through the local engine's mapper
    monkeypatch.setattr(costs, "next_token_logits",
                        lambda *a, **k: prompt_calls.append(a[2]) or real_logits(*a, **k))
    first = costs.run_cost(handle, cost_config(handle, ["0.1"], (), docs, WINDOW, CAPS), docs, store)
    again = costs.run_cost(handle, cost_config(handle, ["0.1"], (), docs, WINDOW, CAPS), docs, store)
    other = costs.run_cost(handle, cost_config(handle, ["1.2"], (), docs, WINDOW, CAPS), docs, store)
    assert not first.from_cache and again.from_cache and again.hash == first.hash != other.hash
    assert calls == [()] and prompt_calls == [()]  # the masks-in-force scores once, kept for the second report
    fresh = cost_report(handle, cost_config(handle, ["1.2"], (), docs, WINDOW, CAPS), docs)
    assert [g.mean_kl for g in other.result.groups] == [g.mean_kl for g in fresh.groups]
    assert other.result.text.perplexity_after == fresh.text.perplexity_after
    assert other.result.text.perplexity_before == first.result.text.perplexity_before
    listed, problems = list_experiments(store, kind="cost")
    assert {s.hash for s in listed} == {first.hash, other.hash} and not problems
    assert "prompts flip" in listed[0].headline
    assert '"perplexity_after"' in export_json(first) and "accuracy_before" in export_csv(first)
    assert costs.load_cost(store, first.hash).result.verdict() == first.result.verdict()
    assert costs.evidence(first).startswith(f"report {first.hash}: ")
