"""A stored discovery has a History line (the `result` cell), like every other experiment."""
from synapse_core.analysis.discovery import discovery_config
from synapse_core.experiments.discoveries import run_discovery
from synapse_core.experiments.records import list_experiments
from synapse_core.experiments.store import ResultStore

PROMPT = "the cat sat on the mat and the dog ran to the"


def test_a_discovery_lists_its_circuit_and_joint_effect(llama, tmp_path):
    store = ResultStore(str(tmp_path))
    config = discovery_config(llama, PROMPT, "cat", "dog", top_k_heads=2, max_pair_sweeps=1)
    result = run_discovery(llama, config, store).result
    (summary,) = list_experiments(store, kind="discover")[0]
    heads = ", ".join(f"{h.layer}.{h.head}" for h in result.heads)
    verdict = "beats random sets" if result.circuit.beats_random else "no better than random sets"
    assert summary.headline == f"heads {heads} · logit_diff {result.circuit.effect:+.3g} together · {verdict}"
