"""A cost report kept as evidence: its hash and verdict recorded with each quarantined head, in the
audit record of the change, and in the head column's description that OpenMetadata shows."""
from ablation_models import tiny_handle

from synapse_core.analysis.capabilities import Capability
from synapse_core.analysis.cost import cost_config
from synapse_core.experiments.costs import evidence, run_cost
from synapse_core.experiments.store import ResultStore
from synapse_core.governance.catalog import evidence_markdown, parse_evidence, with_evidence
from synapse_core.governance.maskstore import MaskStore
from synapse_core.governance.service import Governance

CAPS = (Capability("capitals", "the capital of France is the city of", "Paris"),
        Capability("people", "Mary gave a drink to", "John"))


def test_the_cost_report_travels_with_the_quarantine(tmp_path):
    handle = tiny_handle("llama")
    store = ResultStore(tmp_path / "results")
    exp = run_cost(handle, cost_config(handle, ["0.1", "1.2"], (), None, 16, CAPS), None, store)
    kept = evidence(exp)
    assert kept.startswith(f"report {exp.hash}: ") and "capability prompts change answer" in kept
    gov = Governance(handle, config=None, store=MaskStore(tmp_path / "masks"), user="ana")
    gov.quarantine(["0.1", "1.2"], reason="pushes Paris", experiment="a" * 16, cost=kept)
    entries = gov.masks()
    assert [e.cost for e in entries] == [kept, kept]
    record = gov.audit()[-1]
    assert record.action == "add" and exp.hash in record.detail and record.experiment == "a" * 16
    block = evidence_markdown(entries[0])
    assert f"- cost: report {exp.hash}: " in block
    assert parse_evidence(with_evidence("Head 1 of layer 0", entries[0]))["cost"] == kept
    gov.quarantine(["0.1"], reason="pushes Paris", experiment="a" * 16)  # re-recorded without a report
    assert gov.masks()[0].cost is None and gov.masks()[1].cost == kept
    store.close()
