"""Attribution graphs and the logit lens on the bundled model: completeness to 1e-4 in float32, the
output's direct inputs add up to the real logit difference, the CLI prints and writes the graph."""
import json
from pathlib import Path

import pytest
from cli_helpers import run_cli

from synapse_core.analysis.lens import logit_lens
from synapse_core.common.errors import BadInput
from synapse_core.graphs.adjacency import max_tokens
from synapse_core.graphs.build import build_graph
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.ops import parse_intervention

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The capital of Australia is the city of"


@pytest.fixture(scope="module")
def graph(bundled):
    return build_graph(bundled, PROMPT, " Sydney", " Canberra")


def test_graph_is_complete_and_adds_up_to_the_real_logit_difference(bundled, graph):
    assert graph.completeness_error < 1e-4 and graph.worst_node_error < 1e-4
    real = ablate(bundled, PROMPT, " Sydney", [parse_intervention("0.0")], contrast=" Canberra").clean.logit_diff
    assert graph.output_value == pytest.approx(real, abs=1e-4)
    total = sum(w for _, w in graph.logit_inputs) + graph.output_constant
    assert total == pytest.approx(graph.output_value, abs=1e-4)
    assert graph.n_nodes == 8 * (30 * 10 + 1) + 1 and 0 < len(graph.nodes) < graph.n_nodes
    assert len(graph.claims) == 20 and graph.rho is not None and -1 <= graph.rho <= 1


def test_size_limit_is_stated_and_enforced(bundled):
    limit = max_tokens(30, 9)
    assert limit == 66
    with pytest.raises(BadInput, match=f"limited to {limit}"):
        build_graph(bundled, "word " * (limit + 5), " Sydney")


def test_lens_reads_paris_at_the_top_by_the_last_layer(bundled):
    r = logit_lens(bundled, "The Eiffel Tower is in the city of", " Paris")
    assert r.ranks[-1, -1] == 0 and r.probs[-1, -1] > 0.5
    assert r.ranks[0, -1] > 0  # the embedding alone does not predict it
    assert r.first_top_row() not in (None, "embed")


def cli(*args, check=True):
    return run_cli(*args, check=check)


def test_cli_graph_json_and_circuit_tracer_file(tmp_path):
    out = tmp_path / "g.json"
    proc = cli("graph", "--prompt", PROMPT, "--target", " Sydney", "--contrast", " Canberra", "--no-masks",
               "--claims", "5", "--out", str(out), "--json")
    payload = json.loads(proc.stdout)
    assert {"id", "kind", "layer", "head", "position", "value", "influence"} <= set(payload["nodes"][0])
    assert {"source", "target", "weight"} == set(payload["edges"][0])
    total = sum(n["weight"] for n in payload["logit_inputs"]) + payload["output_constant"]
    assert total == pytest.approx(payload["output_value"], abs=1e-4)
    assert payload["completeness_error"] < 1e-4 and payload["replacement_score"] == 1.0
    doc = json.loads(out.read_text())
    assert set(doc) == {"metadata", "qParams", "nodes", "links"} and len(doc["links"]) == len(payload["edges"])
    bad = cli("graph", "--prompt", PROMPT, "--target", " Canberra and", "--no-masks", "--json", check=False)
    assert bad.returncode == 2 and "is 2 tokens" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
