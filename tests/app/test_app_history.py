"""The History page: experiments made on the Ablate page are listed, filtered, reopened (also by a
`?experiment=<hash>` link, on the History and the Ablate page), exported and deleted; an unreadable
store entry is reported and skipped."""
import json

import diskcache
import pytest
from app_helpers import app
from streamlit.elements.widgets.button import ButtonMixin
from test_app_ablate import fill, table

from synapse_core.common import settings
from ui import core

PROMPT = "When Alice and Bob went to the park, Bob gave a ball to"  # only this file's experiments use it


@pytest.fixture
def downloads(monkeypatch):
    """What each download button offers, by widget key."""
    offered = {}
    original = ButtonMixin.download_button

    def record(self, label, data, *args, **kwargs):
        offered[kwargs.get("key")] = data
        return original(self, label, data, *args, **kwargs)

    monkeypatch.setattr(ButtonMixin, "download_button", record)
    return offered


def two_experiments():
    """An ablation and a prompt set made on the Ablate page; the app and their hashes."""
    at = fill(app().switch_page("pages/ablate.py").run(), prompt=PROMPT, target=" Alice", contrast=" Bob")
    at.button(key="ablate_run_button").click().run()
    at.text_area(key="ablate_promptset_text").input(f'{PROMPT} | " Alice" | " Bob"')
    at.button(key="ablate_promptset_button").click().run()
    assert not at.exception and not at.error
    return at, at.session_state[core.ABLATE_RUN].hash, at.session_state[core.ABLATE_PROMPTSET].hash


def listed(at) -> list[str]:
    return list(table(at, "created")["experiment"])


def test_history_lists_filters_reopens_exports_and_deletes(downloads):
    at, ablation, promptset = two_experiments()
    at.switch_page("pages/history.py").run()
    assert not at.exception and not at.error
    assert {ablation, promptset} <= set(listed(at))
    assert listed(at)[:2] == [promptset, ablation]  # newest first

    at.text_input(key="history_search").input("Alice and Bob").run()
    assert sorted(listed(at)) == sorted([ablation, promptset])
    at.selectbox(key="history_kind").set_value("promptset").run()
    assert listed(at) == [promptset]
    at.selectbox(key="history_model").set_value("SmolLM2-135M-Instruct").run()
    assert listed(at) == [promptset]
    at.selectbox(key="history_kind").set_value(None).run()

    at.selectbox(key="history_open").set_value(ablation).run()
    assert not at.exception and not at.error
    assert at.success[0].value == f"Answered from the store · experiment `{ablation}`"
    assert table(at, "metric").set_index("metric").loc["p(target)", "clean"] > 0.5
    exported = json.loads(downloads["history_open_download_json"])
    assert exported["experiment"] == ablation and exported["config"]["kind"] == "ablation"
    assert exported["config"]["prompts"] == [PROMPT]
    assert exported["result"]["target"]["token"] == " Alice"
    csv = downloads["history_open_download_csv"].splitlines()
    assert csv[0] == "metric,clean,intervened,change" and csv[1].startswith("log_prob,")

    at.button(key="history_delete").click().run()
    assert f"Delete experiment `{ablation}`" in at.warning[0].value
    at.button(key="history_delete_no").click().run()
    assert not [w for w in at.warning if w.value.startswith("Delete")] and ablation in listed(at)
    at.button(key="history_delete").click().run()
    at.button(key="history_delete_yes").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value == f"Deleted experiment {ablation}."
    assert listed(at) == [promptset]
    assert core.experiment_store().get(ablation) is None


def test_an_experiment_link_opens_it_on_the_history_and_the_ablate_page():
    at, ablation, _ = two_experiments()
    at.query_params["experiment"] = ablation
    at.switch_page("pages/history.py").run()
    assert not at.exception and not at.error
    assert "Linked experiment" in [h.value for h in at.subheader]
    assert at.success[0].value == f"Answered from the store · experiment `{ablation}`"
    assert table(at, "metric").set_index("metric").loc["p(target)", "clean"] > 0.5

    fresh = app()  # another visitor opens the share link the Ablate page shows
    fresh.switch_page("pages/ablate.py")
    fresh.query_params["experiment"] = ablation
    fresh.run()
    assert not fresh.exception and not fresh.error
    assert fresh.subheader[0].value == "Shared experiment"
    assert fresh.success[0].value == f"Answered from the store · experiment `{ablation}`"
    assert any(f"(ablate?experiment={ablation})" in m.value for m in fresh.markdown)
    fresh.button(key="ablate_shared_close").click().run()
    assert "experiment" not in fresh.query_params and fresh.subheader[0].value == "Intervention"

    for link, message in (("0123456789abcdef", "No experiment 0123456789abcdef is stored here"),
                          ("zzz", "'zzz' is not an experiment id")):
        at.query_params["experiment"] = link
        at.switch_page("pages/history.py").run()
        assert not at.exception
        assert [message in e.value for e in at.error] == [True], [e.value for e in at.error]


def test_an_unreadable_entry_is_reported_and_skipped():
    at, ablation, promptset = two_experiments()
    bad = "badbadbadbadbad0"
    raw = diskcache.Cache(str(settings.subdir("results")))
    raw.set(bad, "not a result")
    try:
        at.switch_page("pages/history.py").run()
        assert not at.exception and not at.error
        assert [w.value for w in at.warning if w.value.startswith("Skipped")] == [
            f"Skipped a stored entry: result {bad} is stored but is not a Synapse result (str)"]
        assert {ablation, promptset} <= set(listed(at)) and bad not in listed(at)
        at.query_params["experiment"] = bad
        at.run()
        assert not at.exception
        assert [e.value for e in at.error] == [f"result {bad} is stored but is not a Synapse result (str)"]
    finally:
        raw.delete(bad)
        raw.close()


def test_a_result_of_an_older_engine_is_listed_and_reopened_as_such():
    from synapse_core.experiments.store import Entry

    at, ablation, _ = two_experiments()
    store = core.experiment_store()
    current = store.get(ablation)
    old = "0dd0dd0dd0dd0dd0"
    raw = diskcache.Cache(str(settings.subdir("results")))
    raw.set(old, Entry(old, "ablation", current.created - 60, current.summary, current.result, engine="0.1.0+schema1"))
    try:
        at.switch_page("pages/history.py").run()
        assert not at.exception and not at.error
        engines = dict(zip(table(at, "created")["experiment"], table(at, "created")["engine"]))
        assert engines[old] == "older engine (0.1.0+schema1)" and engines[ablation] == "this engine"
        at.query_params["experiment"] = old
        at.run()
        assert not at.exception and not at.success  # never "Answered from the store"
        assert any(w.value.startswith("Made by an older engine (0.1.0+schema1), not this one") for w in at.warning), \
            [w.value for w in at.warning]
    finally:
        raw.delete(old)
        raw.close()
