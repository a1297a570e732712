"""The cheapest sufficient quarantine on a tiny model: greedy steps re-measured exactly, the first
set reaching the share chosen, and the Pareto front of the trade-off."""
import pytest

from synapse_core.analysis.cheapest import TradeoffPoint, greedy_search, pareto_front
from synapse_core.analysis.circuit import head_set_scores
from synapse_core.arch.spec import HeadRef
from synapse_core.common.errors import BadInput
from synapse_core.interventions.metrics import resolve_target
from synapse_core.interventions.promptset import PromptCase
from synapse_core.model.tokens import encode_prompt

PROMPT = "the cat sat on the mat and the dog ran to the"


def _measure(handle, heads):
    ids = encode_prompt(handle, PROMPT)[0]
    scores, _ = head_set_scores(handle, ids, [tuple(heads)], resolve_target(handle, "cat", "dog"))
    return float(scores["logit_diff"][0] - scores["clean_logit_diff"][0])


def test_greedy_steps_are_exact_ablations_and_the_first_set_reaching_the_share_is_chosen(llama):
    singles = {HeadRef(layer, head): _measure(llama, [HeadRef(layer, head)]) for layer in range(2) for head in range(4)}
    candidates = sorted(singles, key=singles.get)[:6]  # as discovery verifies them: most negative first
    search = greedy_search(llama, [PromptCase(PROMPT, "cat", "dog")], candidates, candidates[:4], "logit_diff",
                           share=0.8)
    assert search.circuit == tuple(candidates[:4]) and search.circuit_effect < 0
    assert search.circuit_effect == pytest.approx(_measure(llama, search.circuit), abs=1e-5)
    for step in search.steps:
        assert step.effect == pytest.approx(_measure(llama, step.heads), abs=1e-5)
        assert step.share == pytest.approx(step.effect / search.circuit_effect)
    assert search.steps[0].heads == (candidates[0],)  # the strongest single head first
    assert [len(s.heads) for s in search.steps] == list(range(1, len(search.steps) + 1))
    reached = [s for s in search.steps if s.share >= 0.8]
    assert search.chosen == reached[0].heads
    assert all(s.share < 0.8 for s in search.steps[:len(search.chosen) - 1])
    with pytest.raises(BadInput, match="share 1.5"):
        greedy_search(llama, [PromptCase(PROMPT, "cat", "dog")], candidates, candidates[:4], "logit_diff", share=1.5)


def test_the_pareto_front_keeps_the_points_no_other_beats():
    a, b = HeadRef(0, 1), HeadRef(1, 2)
    points = [TradeoffPoint("greedy 1", (a,), -1.0, 0.5, 0.01, 0, None),
              TradeoffPoint("greedy 2", (a, b), -1.8, 0.9, 0.03, 1, None),
              TradeoffPoint("circuit", (a, b), -1.6, 0.8, 0.05, 2, None),  # less effect, more perplexity
              TradeoffPoint("no text", (b,), -1.9, 0.95, None, 0, None)]
    assert [p.pareto for p in pareto_front(points)] == [True, True, False, False]


def test_the_tradeoff_puts_each_greedy_set_at_its_stored_cost(llama, tmp_path):
    from synapse_core.analysis.capabilities import Capability
    from synapse_core.analysis.perplexity import text_docs
    from synapse_core.experiments.costs import load_cost, tradeoff
    from synapse_core.experiments.store import ResultStore

    singles = {HeadRef(layer, head): _measure(llama, [HeadRef(layer, head)]) for layer in range(2) for head in range(4)}
    candidates = sorted(singles, key=singles.get)[:5]
    search = greedy_search(llama, [PromptCase(PROMPT, "cat", "dog")], candidates, candidates[:3], "logit_diff")
    docs = text_docs(llama, " ".join([PROMPT] * 6), "words")
    caps = (Capability("g", "the cat sat on the", "mat"), Capability("g", "the dog ran to the", "cat"))
    store = ResultStore(tmp_path / "results")
    points = tradeoff(llama, search, (), docs, 16, caps, store=store)
    assert [p.heads for p in points][:len(search.steps)] == [s.heads for s in search.steps]
    for p in points:
        report = load_cost(store, p.experiment).result
        assert {(m.layer, m.head) for m in report.heads} == {(h.layer, h.head) for h in p.heads}
        assert p.perplexity_change == report.text.perplexity_change and p.flipped == len(report.flipped)
    assert any(p.pareto for p in points)
    store.close()
