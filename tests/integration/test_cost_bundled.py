"""The cost of the guided demo's hallucination quarantine on the bundled model: it lowers p(' Sydney'),
raises perplexity on held-out text, and a report of heads already in force changes nothing."""
import pytest

from synapse_core.analysis.capabilities import default_capabilities
from synapse_core.analysis.cost import cost_config, cost_report
from synapse_core.analysis.perplexity import corpus_docs
from synapse_core.arch.spec import HeadMask
from synapse_core.common.errors import StoreError
from synapse_core.interventions.promptset import PromptCase

TARGET = (PromptCase("The capital of Australia is the city of", " Sydney", " Canberra"),)


@pytest.fixture(scope="module")
def text(bundled):
    try:
        return corpus_docs(bundled, 512, 256)
    except StoreError as exc:
        pytest.skip(f"the corpus is not installed: {exc}")


def test_the_demo_circuit_lowers_sydney_and_costs_perplexity(bundled, text):
    caps = tuple(c for c in default_capabilities() if c.group == "facts and capitals")
    report = cost_report(bundled, cost_config(bundled, ["0.6", "23.5", "21.3"], (), text, 256, caps, TARGET), text)
    sydney = report.targets[0]
    assert sydney.prob_before > 0.7 and sydney.prob_before - sydney.prob_after > 0.2
    assert sydney.logit_diff_after < sydney.logit_diff_before
    assert report.text.tokens == 512 and report.text.perplexity_after > report.text.perplexity_before > 1
    (facts,) = report.groups
    assert facts.prompts == 20 and facts.accuracy_before >= 0.9
    assert report.verdict().startswith("lowers p(' Sydney') by ")

    in_force = (HeadMask(0, 6), HeadMask(23, 5))
    same = cost_report(bundled, cost_config(bundled, ["0.6"], in_force, text, 256, caps[:3], TARGET), text)
    assert same.text.perplexity_change == 0 and same.flipped == () and same.groups[0].worst_kl == 0
    assert same.targets[0].prob_before == same.targets[0].prob_after < sydney.prob_before
