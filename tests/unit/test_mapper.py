"""The Mapper that hands discovery, harvesting and cost reports to a job engine: cut into shards the way
the ray engine cuts them, run out of order, pickled on the way (as a worker's arguments and results
are), and gathered back, every one of them gives the result of the one in-process call. The ray engine
itself runs the same shard functions against a real cluster in tests/integration/test_ray_jobs.py."""
import pickle

import numpy as np
import pytest

from synapse_core.analysis.cost import cost_config, cost_report
from synapse_core.analysis.discovery import discover, discovery_config
from synapse_core.analysis.perplexity import TextDocs, score_text
from synapse_core.features.harvest import harvest
from synapse_core.interventions.promptset import PromptCase
from synapse_core.jobs.config import EngineConfig, JobCancelled
from synapse_core.jobs.engine import mapper
from synapse_core.jobs.shards import split
from synapse_core.model.mapper import Mapper, local_mapper

CASES = (PromptCase("the cat sat on the mat and the dog ran to the", "cat", "dog"),
         PromptCase("a bird and a fish swam in the blue sea and the", "bird", "fish"),
         PromptCase("the red cat and the blue dog sat on the mat and the", "cat", "dog"),
         PromptCase("the sun and the moon were up in the sky and the", "sun", "moon"))


def sharded(handle, shard_size: int = 1, per_call: int = 3, calls: list | None = None) -> Mapper:
    """A Mapper as the ray engine runs one: contiguous shards, last shard first, every argument and
    result through pickle, gathered by shard index."""

    def run(fn, cases, params, progress):
        shards = split(cases, shard_size)
        parts = [None] * len(shards)
        for shard in reversed(shards):
            sent = pickle.loads(pickle.dumps((shard.cases, params)))
            parts[shard.index] = pickle.loads(pickle.dumps(list(fn(handle, sent[0], **sent[1]))))
        if calls is not None:
            calls.append(len(cases))
        return [r for part in parts for r in part]

    return Mapper(run, cases_per_call=per_call)


def test_a_discovery_over_a_prompt_set_is_the_same_on_shards(llama):
    config = discovery_config(llama, cases=CASES, top_k_heads=2, max_pair_sweeps=1, verify_heads=6)
    calls = []
    here, there = discover(llama, config), discover(llama, config, mapper=sharded(llama, calls=calls))
    # ranking, verification, pairs and the in-sample baseline on the 2 training prompts, then the 2 held out
    assert calls == [2, 2, 2, 2, 2]
    assert here.circuit.heads == there.circuit.heads and here.circuit.prompts == there.circuit.prompts
    np.testing.assert_array_equal(here.estimates, there.estimates)
    assert [(h.ref, h.verified_effect, h.verified_std) for h in here.candidates] == \
        [(h.ref, h.verified_effect, h.verified_std) for h in there.candidates]
    assert [p.joint_effect for p in here.pairs] == [p.joint_effect for p in there.pairs]
    for a, b in ((here.circuit, there.circuit), (here.held_out, there.held_out)):
        assert (a.effect, a.random_effects, a.target_rate_after) == (b.effect, b.random_effects, b.target_rate_after)
    assert here.clean == there.clean and here.held_out.prompts == there.held_out.prompts
    assert len(here.held_out.prompts) == 2


def test_a_harvest_through_shards_writes_the_same_files(llama, tmp_path):
    rng = np.random.default_rng(0)
    contexts = [rng.integers(0, 64, 6).astype(np.int32) for _ in range(11)]
    sites = ["layers.0.resid.post", "layers.1.mlp.in"]
    calls = []
    here = harvest(llama, sites, iter(contexts), 11, tmp_path / "a", ctx_len=6, batch_size=2)
    there = harvest(llama, sites, iter(contexts), 11, tmp_path / "b", ctx_len=6, batch_size=2,
                    mapper=sharded(llama, calls=calls))
    assert calls == [3, 3]  # 6 batches (the last of 1 context), 3 a call: each call written in order
    np.testing.assert_array_equal(here.tokens(), there.tokens())
    for site in sites:
        np.testing.assert_array_equal(here.acts(site), there.acts(site))
        assert np.abs(here.acts(site)).sum() > 0


def test_a_harvest_through_shards_says_when_the_corpus_runs_out(llama, tmp_path):
    rng = np.random.default_rng(0)
    contexts = [rng.integers(0, 64, 6).astype(np.int32) for _ in range(5)]
    from synapse_core.common.errors import BadInput

    with pytest.raises(BadInput, match="ran out after 5 contexts; asked for 9"):
        harvest(llama, ["layers.0.resid.post"], iter(contexts), 9, tmp_path, ctx_len=6, batch_size=2,
                mapper=sharded(llama))


def test_text_scores_and_a_cost_report_are_the_same_on_shards(llama):
    words = "the cat sat on the mat and the dog ran to the blue sea".split()
    rng = np.random.default_rng(1)
    docs = TextDocs("words", "d" * 16, tuple(tuple(llama.tokenizer(" ".join(rng.choice(words, n))).input_ids)
                                              for n in (70, 40, 33)))
    here, there = score_text(llama, docs, 16, ()), score_text(llama, docs, 16, (), mapper=sharded(llama))
    np.testing.assert_array_equal(here.ce_sum, there.ce_sum)
    np.testing.assert_array_equal(here.doc_of, there.doc_of)
    config = cost_config(llama, ["0.1", "1.2"], (), docs, 16, targets=CASES[:1])
    a, b = cost_report(llama, config, docs), cost_report(llama, config, docs, mapper=sharded(llama, shard_size=2))
    assert a.text.perplexity_after == b.text.perplexity_after != a.text.perplexity_before
    assert [g.mean_kl for g in a.groups] == [g.mean_kl for g in b.groups]  # each pass holds the same prompts
    assert a.targets[0].prob_after == b.targets[0].prob_after


def test_the_local_engine_s_mapper_is_one_call_and_polls_cancel(llama):
    seen = []

    def shard(handle, cases, progress=None, *, scale):
        for i, c in enumerate(cases):
            seen.append(c)
            if progress:
                progress(i + 1, len(cases), "")
        return [c * scale for c in cases]

    assert local_mapper(llama)(shard, (1, 2, 3), {"scale": 2}) == [2, 4, 6]
    assert mapper(llama).cases_per_call == 1 and mapper(llama, EngineConfig("ray", ray_actors=3)).cases_per_call == 12
    with pytest.raises(JobCancelled, match="cancelled after 1 of 3"):
        mapper(llama, cancel=lambda: len(seen) > 3)(shard, (1, 2, 3), {"scale": 1}, lambda d, n, m: None)
