"""The Graph page on the real bundled model: build, completeness on the page, re-pruning by slider, node
details, claims, supernodes stored with the graph, the share link, the logit lens, and bad input."""
import json

import pytest
from app_helpers import app, chart_frames, metrics

from synapse_core.experiments.graphs import load_graph
from synapse_core.graphs.graph import with_thresholds
from ui import core
from ui import graph as ug

PROMPT = "The capital of Australia is the city of"


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("graph-home")
        mp.setenv("SYNAPSE_HOME", str(path))
        yield path


def graph_page(at=None):
    return (at or app()).switch_page("pages/graph.py").run()


def build(at, target=" Sydney", contrast=" Canberra"):
    at.text_area(key="graph_prompt").input(PROMPT)
    at.text_input(key="graph_target").input(target)
    at.text_input(key="graph_contrast").input(contrast)
    return at.button(key="graph_run_button").click().run()


def drawn(at):
    args = json.loads(at.get("component_instance")[0].proto.json_args)
    return json.loads(args["data"])


def test_build_shows_a_complete_graph_claims_and_the_lens():
    at = build(graph_page())
    assert not at.exception and not at.error
    shown = metrics(at)
    assert float(shown["completeness error (output)"]) < 1e-4
    assert float(shown["logit(' Sydney') - logit(' Canberra')"]) > 0  # the model prefers Sydney
    graph = at.session_state[ug.GRAPH_RUN].graph
    drawing = drawn(at)
    assert len(drawing["nodes"]) == len(graph.nodes) and len(drawing["edges"]) == len(graph.edges)
    assert any(n["id"].startswith("31_") for n in drawing["nodes"])  # the output node
    node_rows = at.dataframe[2].value  # nodes by influence
    assert list(node_rows["influence"]) == sorted(node_rows["influence"], reverse=True)
    claims = at.dataframe[3].value
    assert len(claims) == 20 and set(claims["agree"]) <= {"yes", "no"}
    lens = chart_frames(at)[-1]
    assert set(lens["layer"]) >= {"embed", "29"} and lens["p"].between(0, 1).all()
    assert graph.completeness_error < 1e-4


def test_threshold_slider_prunes_and_a_picked_node_shows_its_edges():
    at = build(graph_page())
    before = len(at.dataframe[2].value)
    at.slider(key="graph_node_threshold").set_value(0.3).run()
    after = len(at.dataframe[2].value)
    assert 0 < after < before
    shown = with_thresholds(at.session_state[ug.GRAPH_RUN].graph, 0.3, 0.98)
    computed = next(n.id for n in shown.nodes if n.kind in ("head", "mlp"))
    at.selectbox(key=ug.NODE_PICK).set_value(computed).run()
    assert any("total effect on" in m.value for m in at.markdown)
    assert len(at.dataframe[0].value) > 0  # incoming edges of the picked node


def test_supernodes_are_stored_with_the_graph_and_the_share_link_reopens_it():
    at = build(graph_page())
    key = at.session_state[ug.GRAPH_RUN].key
    ids = [n.id for n in at.session_state[ug.GRAPH_RUN].graph.nodes if n.kind in ("head", "mlp")][:2]
    at.multiselect(key="graph_sn_nodes").set_value(ids)
    at.text_input(key="graph_sn_name").input("my pair")
    at.button(key="FormSubmitter:graph_supernode_form-Group").click().run()
    assert not at.error
    assert at.session_state[ug.GRAPH_RUN].graph.supernodes[-1].name == "my pair"
    stored = load_graph(core.experiment_store(), key).result
    assert any(s.name == "my pair" and set(s.members) == set(ids) for s in stored.supernodes)
    again = app()
    again.query_params["experiment"] = key
    again = graph_page(again)
    assert any(s.name == "my pair" for s in again.session_state[ug.GRAPH_RUN].graph.supernodes)


def test_verify_on_discover_fills_the_discover_page():
    at = build(graph_page())
    at.button(key="graph_to_discover").click().run()
    assert "Discover is filled" in at.info[0].value
    at.switch_page("pages/discover.py").run()
    assert at.text_area(key="discover_prompt").value == PROMPT
    assert (at.text_input(key="discover_target").value, at.text_input(key="discover_contrast").value) == \
        (" Sydney", " Canberra")


def test_a_target_of_two_tokens_is_refused():
    at = build(graph_page(), target=" Canberra and", contrast="")
    assert at.error and "is 2 tokens" in at.error[0].value
    assert ug.GRAPH_RUN not in at.session_state
