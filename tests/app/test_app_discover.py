"""The Discover page on the real bundled model (IOI prompt), and on a tiny word-level model saved as a folder.

The module shares one SYNAPSE_HOME, so a discovery computed by one test is answered from the store in
the next; the quarantine test removes the mask store it wrote, so no later run here has masks in force.
"""
import json
import os
import shutil

import pytest
from app_helpers import app, chart_frames, metrics

from synapse_core.governance.service import Governance
from ui import core, govtables
from ui import discover as ui_discover

IOI = "When Mary and John went to the store, John gave a drink to"
TARGET, CONTRAST = " Mary", " John"


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("discover-home")
        mp.setenv("SYNAPSE_HOME", str(path))
        yield path


def discover_page(at=None):
    return (at or app()).switch_page("pages/discover.py").run()


def run_ioi(at, target=TARGET, contrast=CONTRAST, top_k=5, pairs=3):
    at.text_area(key="discover_prompt").input(IOI)
    at.text_input(key="discover_target").input(target)
    at.text_input(key="discover_contrast").input(contrast)
    at.slider(key="discover_top_k").set_value(top_k)
    at.slider(key="discover_pairs").set_value(pairs)
    return at.button(key="discover_run_button").click().run()


def graph_of(at):
    args = json.loads(at.get("component_instance")[0].proto.json_args)
    return json.loads(args["data"]), json.loads(args["config"])


def test_ioi_discovery_shows_the_verified_circuit_and_a_second_run_comes_from_the_store():
    at = run_ioi(discover_page())
    assert not at.exception and not at.error
    run = at.session_state[core.LAST_DISCOVERY]
    result = run.result
    heads, candidates, edges, pairs = (d.value for d in at.dataframe)
    assert len(heads) == 5 and (heads["verified effect"] < 0).all()
    assert list(heads["head"]) == [f"{h.layer}.{h.head}" for h in result.heads]
    assert heads["verified effect"].is_monotonic_increasing  # ordered by verified effect, strongest first
    assert "verified std" not in heads  # one prompt: no spread to show
    assert len(candidates) == 30 and len(pairs) == 3 and set(pairs["label"]) <= {"redundant", "synergistic", "additive"}

    verdict = at.success[-1].value
    assert verdict.startswith("The circuit lowers logit_diff") and result.circuit.beats_random
    shown = metrics(at)
    rho = result.spearman_rho
    assert rho is not None and rho > 0.5 and shown["Spearman's rho"] == f"{rho:.2f}"
    rate = next(m for m in at.metric if m.label == "Target rate")  # short enough not to be cut in its card
    assert (rate.value, rate.proto.delta) == ("0%", f"from 100%; random {result.circuit.random_target_rate:.0%}")
    assert max(len(m.value) for m in at.metric) <= 6
    random = next(m for m in at.metric if m.label == "Random sets (mean)")
    c = result.circuit
    assert (random.value, random.proto.delta) == (f"{c.random_mean:+.3f}", f"± {c.random_std:.3f} std")

    graph, config = graph_of(at)
    nodes = graph["nodes"]
    assert sorted(n["id"] for n in nodes) == sorted(heads["head"]) and not config["physics"]["enabled"]
    assert config["groups"] == {}  # vis-network rejects None ('Invalid type received for "groups"')
    x_of = {n["id"]: n["x"] for n in nodes}
    layer_of = dict(zip(heads["head"], heads["layer"]))
    assert all((x_of[a] < x_of[b]) == (layer_of[a] < layer_of[b]) for a in x_of for b in x_of if a != b)
    strongest = heads["head"][0]
    assert max(nodes, key=lambda n: n["size"])["id"] == strongest  # node size by |verified effect|
    assert graph["edges"] and all(layer_of[e["from"]] < layer_of[e["to"]] for e in graph["edges"])
    assert len(edges) == len(graph["edges"]) and all(e["label"].split()[-1] in "qkv" for e in graph["edges"])

    bars, grid = chart_frames(at)
    assert len(bars) == 2 * 30 and set(bars["kind"]) == {"estimated", "verified"}
    outlined = grid[grid["circuit"]]
    assert len(grid) == 30 * 9 and sorted(f"{l}.{h}" for l, h in zip(outlined["layer"], outlined["head"])) \
        == sorted(heads["head"])
    # verified heads are coloured by their verified effect, the rest by the estimate
    assert (grid["source"] == "verified").sum() == len(candidates)
    top_cell = grid[(grid["layer"] == result.heads[0].layer) & (grid["head"] == result.heads[0].head)]
    assert top_cell["effect"].item() == result.heads[0].verified_effect < 0
    unverified = grid[grid["source"] == "estimated"]
    assert (unverified["effect"] == unverified["estimate"]).all()
    assert all(n["label"].split("\n")[0] == n["id"] for n in nodes)  # "23.3", as on every page
    assert len(at.get("download_button")) == 2

    # the Governance page's "top head of the last discovery" reads this session's result
    top = govtables.top_discovered(run)
    assert top.head == strongest and top.experiment == run.key and top.prompt == IOI and top.target == TARGET

    at = at.button(key="discover_run_button").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith(f"Answered from the store · experiment `{run.key}`")
    assert at.session_state[core.LAST_DISCOVERY].from_cache
    assert at.session_state[core.LAST_DISCOVERY].result.heads == result.heads


def test_a_share_link_reopens_the_stored_discovery_and_a_later_run_replaces_it():
    at = run_ioi(discover_page())  # stored by the test above, or computed here
    key = at.session_state[core.LAST_DISCOVERY].key
    assert any(f"(discover?experiment={key})" in m.value for m in [*at.success, *at.caption])

    linked = app()
    linked.query_params["experiment"] = key
    linked = discover_page(linked)
    assert not linked.exception and not linked.error
    assert linked.session_state[core.LAST_DISCOVERY].key == key and len(linked.dataframe[0].value) == 5
    assert linked.success[0].value.startswith(f"Answered from the store · experiment `{key}`")
    # the inputs that made it are back in the widgets, not empty beside the stored result
    assert (linked.text_area(key="discover_prompt").value, linked.text_input(key="discover_target").value,
            linked.text_input(key="discover_contrast").value) == (IOI, TARGET, CONTRAST)
    assert (linked.slider(key="discover_top_k").value, linked.slider(key="discover_pairs").value) == (5, 3)
    linked.number_input(key="discover_verify").set_value(5)
    linked = run_ioi(linked, top_k=2, pairs=1)  # a new run is shown, not replaced by the link again
    assert not linked.error and len(linked.dataframe[0].value) == 2

    for bad, message in (("0123456789abcdef", "no experiment 0123456789abcdef is stored here"),
                         ("not-a-hash", "'not-a-hash' is not an experiment id")):
        broken = app()
        broken.query_params["experiment"] = bad
        broken = discover_page(broken)
        assert not broken.exception and message in broken.error[0].value
        assert broken.info[-1].value.startswith("Type a prompt")


def test_quarantine_puts_the_chosen_heads_into_the_mask_store(home):
    at = run_ioi(discover_page())
    run = at.session_state[core.LAST_DISCOVERY]
    circuit = [f"{h.layer}.{h.head}" for h in run.result.heads]
    assert at.multiselect(key="discover_quarantine_heads").value == circuit  # the circuit by default
    chosen = circuit[:2]
    at.multiselect(key="discover_quarantine_heads").set_value(chosen)
    try:
        at = at.button(key="discover_quarantine_button").click().run()
        assert not at.exception and not at.error
        message = at.success[-1].value
        assert message.startswith("Quarantined ") and all(head in message for head in chosen)
        entries = Governance(core.load_model(core.default_spec()), None).masks()
        assert sorted(e.short for e in entries) == sorted(chosen)
        entry = next(e for e in entries if e.short == chosen[0])
        assert (entry.experiment, entry.prompt, entry.target, entry.level) == (run.key, IOI, TARGET, "projection")
        assert f"{chosen[0]} {run.result.heads[0].verified_effect:+.3f}" in entry.effect
        assert any(f"`{chosen[0]}` (projection)" in m.value for m in at.sidebar.markdown)  # masks in force
    finally:
        shutil.rmtree(home / "masks", ignore_errors=True)


@pytest.mark.parametrize("target, contrast, message", [
    ("", CONTRAST, "the target token is empty"),
    (" John", CONTRAST, "are the same token"),
])
def test_bad_input_is_an_error_and_shows_no_result(target, contrast, message):
    at = run_ioi(discover_page(), target=target, contrast=contrast)
    assert not at.exception
    assert [e.value for e in at.error] and message in at.error[0].value
    assert core.LAST_DISCOVERY not in at.session_state and at.info[0].value.startswith("Type a prompt")


def test_an_engine_range_error_reaches_the_page(monkeypatch):
    """The slider cannot go below 1; the engine's own check (top_k 0) still reaches the user as st.error."""
    real = ui_discover.run_discovery

    def with_top_k_0(handle, config, *args, **kwargs):
        from synapse_core.analysis.discovery import discovery_config
        discovery_config(handle, config.prompts[0], config.targets[0], config.contrasts[0], top_k_heads=0)
        return real(handle, config, *args, **kwargs)

    monkeypatch.setattr(ui_discover, "run_discovery", with_top_k_0)
    at = run_ioi(discover_page())
    assert not at.exception and at.error[0].value == "top_k_heads 0 is out of range: choose 1-20"


def tiny_discover_page(folder):
    at = app()
    at.sidebar.text_input(key=core.MODEL_INPUT).input(folder)
    at = at.sidebar.button(key="model_load").click().run()
    assert not at.sidebar.error and os.path.basename(folder) in at.session_state[core.LOADED_SPEC]
    return discover_page(at)


def test_an_unknown_token_is_an_error_on_a_word_level_model(tiny_folder):
    at = tiny_discover_page(tiny_folder)
    at.text_area(key="discover_prompt").input("the capital of France is the city of")
    at.text_input(key="discover_target").input("zebra")
    at = at.button(key="discover_run_button").click().run()
    assert not at.exception
    assert "target 'zebra' is not in the model's vocabulary" in at.error[0].value


def test_a_prompt_set_averages_over_prompts_and_shows_the_spread(tiny_folder):
    at = tiny_discover_page(tiny_folder)
    at.radio(key="discover_mode").set_value(ui_discover.PROMPT_SET).run()
    at.text_area(key="discover_lines").input("the capital of France is the city of | Paris | London\n"
                                             "the old tower in London was a | big | small\n"
                                             "the king gave a book to the | queen | king\n"
                                             "the dog sat on the | red | blue")
    at.slider(key="discover_top_k").set_value(3)
    at = at.button(key="discover_run_button").click().run()
    assert not at.exception and not at.error
    result = at.session_state[core.LAST_DISCOVERY].result
    assert len(result.cases) == 4 and result.metric == "logit_diff"
    heads = at.dataframe[0].value
    assert len(heads) == 3 and {"estimated std", "verified std"} <= set(heads)
    assert heads["verified std"].tolist() == pytest.approx([h.verified_std for h in result.heads])
    assert any(c.value.startswith("4 prompt(s)") for c in at.caption)
    # chosen on two prompts, judged in sample and on the two held out
    verdicts = [box.value for box in (*at.success, *at.warning) if "sample: judged on" in box.value]
    assert len(verdicts) == 2 and result.held_out is not None
    assert any(v.endswith("*Out of sample: judged on the 2 held-out prompt(s) it was not chosen on.*")
               and v.startswith(result.held_out.verdict[0].upper() + result.held_out.verdict[1:]) for v in verdicts)

    at.text_area(key="discover_lines").input("a line without a target")
    at = at.button(key="discover_run_button").click().run()
    assert "line 1" in at.error[0].value and core.LAST_DISCOVERY not in at.session_state


def test_heads_that_interact_are_said_to_with_the_pair_results(tiny_folder, monkeypatch):
    """When the circuit's joint effect opposes its heads' single effects, the verdict says they interact
    (not "no better than random") and the pairs are shown right under it, largest interaction first."""
    import dataclasses

    real = ui_discover.run_discovery

    def interacting(handle, config, store=None, progress=None, **kwargs):
        exp = real(handle, config, store, progress, **kwargs)
        c = exp.result.circuit
        words = ("the heads interact: ablated together these 3 heads raise logit_diff by 3.96, the opposite of what "
                 "they do alone (each lowers it; their single effects sum to -2.1)")
        circuit = dataclasses.replace(c, interacts=True, beats_random=False, verdict=words)
        return dataclasses.replace(exp, result=dataclasses.replace(exp.result, circuit=circuit))

    monkeypatch.setattr(ui_discover, "run_discovery", interacting)
    at = tiny_discover_page(tiny_folder)
    at.text_area(key="discover_prompt").input("the capital of France is the city of")
    at.text_input(key="discover_target").input("Paris")
    at.text_input(key="discover_contrast").input("London")
    at.slider(key="discover_top_k").set_value(3)
    at.slider(key="discover_pairs").set_value(3)
    at = at.button(key="discover_run_button").click().run()
    assert not at.exception and not at.error
    verdict = [w.value for w in at.warning if w.value.startswith("The heads interact")]
    assert len(verdict) == 1 and "raise logit_diff by 3.96, the opposite of what they do alone" in verdict[0]
    assert verdict[0].endswith("*In sample: the circuit was chosen and judged on this prompt; give a prompt set to "
                               "judge it on prompts it was not chosen on.*")
    assert not any("no better than random" in w.value.lower() for w in at.warning)
    pair_tables = [d.value for d in at.dataframe if list(d.value.columns[:2]) == ["a", "b"]]
    assert len(pair_tables) == 2  # under the verdict, and in the Pairs section
    explained = pair_tables[0]
    assert len(explained) == 3 and explained["interaction"].abs().is_monotonic_decreasing


def test_a_discovery_cancelled_on_the_page_says_so_and_stores_nothing(tiny_folder, monkeypatch):
    """The Discover page runs through ui/jobs.py: Cancel (its flag, set here after the first stage
    report) stops the discovery at its next report, nothing is stored and the page says so once."""
    from synapse_core.common import settings
    from synapse_core.experiments.records import list_experiments

    real = ui_discover.run_discovery
    stages = []

    def press_cancel(handle, config, store=None, progress=None, **kwargs):
        def report(stage, done, total):
            stages.append(stage)
            kwargs["cancel"].__self__.set()  # the job's cancel flag (cancel is its is_set): what Cancel's on_click sets
            progress(stage, done, total)
        return real(handle, config, store, report, **kwargs)

    monkeypatch.setattr(ui_discover, "run_discovery", press_cancel)
    at = tiny_discover_page(tiny_folder)
    at.text_area(key="discover_prompt").input("the cat sat on the mat and the dog ran to the")
    at.text_input(key="discover_target").input("cat")
    at.text_input(key="discover_contrast").input("dog")
    stored = {s.hash for s in list_experiments(core.result_store(str(settings.subdir("results"))))[0]}
    at = at.button(key="discover_run_button").click().run()
    assert not at.exception and not at.error and stages[0] == "ranking"
    assert core.LAST_DISCOVERY not in at.session_state
    assert [w.value for w in at.warning if "cancelled" in w.value] == [
        "The run was cancelled (cancelled before it started); nothing of it was stored."]
    assert {s.hash for s in list_experiments(core.result_store(str(settings.subdir("results"))))[0]} == stored
