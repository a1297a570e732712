"""Experiments: content hash, answered from the store, History helpers, corrupt entries reported."""
import csv
import dataclasses
import io
import json

import pytest
from ablation_models import OTHER, PROMPT, tiny_handle

from synapse_core.arch.spec import HeadMask, Intervention
from synapse_core.common.errors import BadInput, StoreError
from synapse_core.experiments.records import (
    ablation_config,
    delete_experiment,
    export_csv,
    export_json,
    list_experiments,
    load_experiment,
    promptset_config,
    run_experiment,
    sweep_config,
)
from synapse_core.experiments.store import ResultStore
from synapse_core.interventions.ops import OpSettings
from synapse_core.interventions.promptset import PromptCase
from synapse_core.interventions.reference import default_reference_prompts

HEAD = Intervention(0, "attn.head", "zero", 1)


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "results")
    yield s
    s.close()


def _config(**changes):
    handle = tiny_handle("llama")
    config = ablation_config(handle, PROMPT, "Paris", [HEAD], "London")
    return dataclasses.replace(config, **changes)


def test_same_config_same_hash():
    handle = tiny_handle("llama")
    a = ablation_config(handle, PROMPT, "Paris", [HEAD], "London")
    b = ablation_config(handle, PROMPT, "Paris", [Intervention(0, "attn.head", "zero", 1)], "London")
    assert a == b and a.hash == b.hash and len(a.hash) == 16


@pytest.mark.parametrize("change", [
    dict(model="other"), dict(fingerprint="0" * 16), dict(dtype="torch.bfloat16"), dict(prompts=(OTHER,)),
    dict(targets=("Rome",)), dict(contrasts=("Rome",)), dict(contrasts=(None,), metric="log_prob"), dict(interventions=(Intervention(0, "attn.head", "zero", 2),)),
    dict(interventions=(Intervention(0, "attn.head", "mean", 1),)),
    dict(interventions=(Intervention(0, "attn.head", "zero", 1, "last"),)), dict(metric="log_prob"),
    dict(masks=(HeadMask(1, 1),)), dict(masks=(HeadMask(1, 1, "attention"),)), dict(settings=OpSettings(scale=2.0)),
    dict(top_k=5), dict(kind="promptset"),
])
def test_any_change_gives_another_hash(change):
    assert _config(**change).hash != _config().hash


def test_sweep_and_promptset_configs_hash_their_own_fields():
    handle = tiny_handle("llama")
    base = sweep_config(handle, PROMPT, "Paris")
    assert base.hash == sweep_config(handle, PROMPT, "Paris").hash
    assert base.hash != sweep_config(handle, PROMPT, "Paris", op="mean").hash
    assert base.hash != sweep_config(handle, PROMPT, "Paris", sites=("mlp",)).hash
    assert base.hash != sweep_config(handle, PROMPT, "Paris", positions="last").hash
    mean = sweep_config(handle, PROMPT, "Paris", op="mean")
    assert mean.settings.reference == default_reference_prompts()  # the default set is part of the hash
    cases = [PromptCase(PROMPT, "Paris", "London")]
    assert promptset_config(handle, cases, [HEAD]).hash != promptset_config(handle, cases * 2, [HEAD]).hash


def test_configs_refuse_bad_values():
    handle = tiny_handle("llama")
    with pytest.raises(BadInput, match="kind 'bogus'"):
        _config(kind="bogus")
    with pytest.raises(BadInput, match="needs a contrast"):
        ablation_config(handle, PROMPT, "Paris", [HEAD], metric="logit_diff")
    with pytest.raises(BadInput, match="head 9 does not exist"):
        ablation_config(handle, PROMPT, "Paris", [Intervention(0, "attn.head", "zero", 9)])
    with pytest.raises(BadInput, match="bogus"):
        sweep_config(handle, PROMPT, "Paris", sites=("bogus",))


def test_the_same_experiment_twice_is_answered_from_the_store(store, monkeypatch):
    handle = tiny_handle("llama")
    config = ablation_config(handle, PROMPT, "Paris", [HEAD], "London", masks=[HeadMask(1, 3)])
    first = run_experiment(handle, config, store)
    assert not first.from_cache and first.hash == config.hash
    import synapse_core.experiments.records as experiments

    monkeypatch.setattr(experiments, "ablate", lambda *a, **k: pytest.fail("recomputed"))
    second = run_experiment(handle, config, store)
    assert second.from_cache and second.result == first.result and second.config == config
    assert second.result.masks == (HeadMask(1, 3),)


@pytest.mark.parametrize("kind", ["ablation", "sweep", "promptset"])
def test_each_kind_runs_reopens_and_exports(store, kind):
    handle = tiny_handle("gpt2")
    if kind == "ablation":
        config = ablation_config(handle, PROMPT, "Paris", [HEAD], "London")
    elif kind == "sweep":
        config = sweep_config(handle, PROMPT, "Paris", "London")
    else:
        config = promptset_config(handle, [PromptCase(PROMPT, "Paris"), PromptCase(OTHER, "city")], [HEAD])
    exp = run_experiment(handle, config, store)
    again = load_experiment(store, exp.hash)
    assert again.from_cache and again.config == config and again.hash == exp.hash
    doc = json.loads(export_json(again))
    assert doc["experiment"] == exp.hash and doc["config"]["kind"] == kind and "result" in doc
    rows = list(csv.DictReader(io.StringIO(export_csv(again))))
    assert len(rows) == {"ablation": 5, "sweep": 8, "promptset": 2}[kind]
    summaries, problems = list_experiments(store, kind=kind)
    assert [s.hash for s in summaries] == [exp.hash] and problems == []
    assert summaries[0].headline


def test_history_filters_and_delete(store):
    handle = tiny_handle("llama")
    a = run_experiment(handle, ablation_config(handle, PROMPT, "Paris", [HEAD]), store)
    b = run_experiment(handle, sweep_config(handle, OTHER, "city"), store)
    store.put("0123456789abcdef", "trace", {"not": "an experiment"})  # other results share the store
    assert {s.hash for s in list_experiments(store)[0]} == {a.hash, b.hash}
    assert [s.hash for s in list_experiments(store, kind="sweep")[0]] == [b.hash]
    assert [s.hash for s in list_experiments(store, search="capital of france")[0]] == [a.hash]
    assert list_experiments(store, model="tiny-gpt2")[0] == []
    assert delete_experiment(store, a.hash)
    assert load_experiment(store, a.hash) is None
    with pytest.raises(BadInput, match="16 hex digits"):
        load_experiment(store, "not-a-hash")


class _Vanishing:
    """Pickles fine, cannot be unpickled once the class is gone: a damaged entry."""


def test_a_corrupt_entry_is_reported_not_hidden(store, monkeypatch):
    handle = tiny_handle("llama")
    config = ablation_config(handle, PROMPT, "Paris", [HEAD])
    good = run_experiment(handle, sweep_config(handle, PROMPT, "Paris"), store)
    store._cache.set(config.hash, _Vanishing())
    monkeypatch.delattr(__import__(__name__), "_Vanishing")
    summaries, problems = list_experiments(store)
    assert [s.hash for s in summaries] == [good.hash]
    assert len(problems) == 1 and config.hash in problems[0]
    with pytest.raises(StoreError, match=config.hash):
        load_experiment(store, config.hash)
    exp = run_experiment(handle, config, store)
    assert not exp.from_cache and any("cannot be read" in n and "computed again" in n for n in exp.notes)
    assert load_experiment(store, config.hash).result == exp.result


def test_a_result_is_reused_only_for_the_same_weights(store):
    config = dataclasses.replace(_config(), fingerprint="f" * 16)
    with pytest.raises(BadInput, match="ffffffffffffffff"):
        run_experiment(tiny_handle("llama"), config, store)


@dataclasses.dataclass(frozen=True)
class _OtherConfig:  # the shape another kind of experiment (e.g. discovery) stores
    kind: str = "discover"
    model: str = "tiny-llama"
    title: str = "discover top 2 heads"
    prompts: tuple = (PROMPT,)
    metric: str = "log_prob"


@dataclasses.dataclass(frozen=True)
class _OtherResult:
    def to_json(self):
        return {"circuit_effect": -1.5, "heads": [{"layer": 0, "head": 1}]}


def test_other_kinds_in_the_store_list_reopen_and_export(store):
    from synapse_core.experiments.records import StoredExperiment

    store.put("00000000000000aa", "discover", StoredExperiment(_OtherConfig(), _OtherResult()))
    summaries, problems = list_experiments(store, kind="discover")
    assert [s.title for s in summaries] == ["discover top 2 heads"] and problems == []
    exp = load_experiment(store, "00000000000000aa")
    rows = list(csv.DictReader(io.StringIO(export_csv(exp))))
    assert rows[0] == {"field": "circuit_effect", "value": "-1.5"}
    assert json.loads(rows[1]["value"]) == [{"layer": 0, "head": 1}]


@pytest.mark.parametrize("make", [
    lambda h: ablation_config(h, PROMPT, "Paris", [Intervention(0, "attn.head", "mean", 1)], "London"),
    lambda h: sweep_config(h, PROMPT, "Paris", "London", op="mean"),
    lambda h: promptset_config(h, [PromptCase(PROMPT, "Paris", "London")], [Intervention(0, "mlp", "mean")]),
])
def test_editing_the_shipped_reference_file_changes_a_mean_experiment_s_hash(make, tmp_path, monkeypatch):
    import synapse_core.interventions.reference as reference

    handle = tiny_handle("llama")
    before = make(handle).hash
    edited = tmp_path / "reference_prompts.txt"
    edited.write_text(reference.REFERENCE_FILE.read_text(encoding="utf-8") + "\none more reference prompt\n",
                      encoding="utf-8")
    monkeypatch.setattr(reference, "REFERENCE_FILE", edited)
    assert make(handle).hash != before


def test_history_lists_a_result_of_an_older_engine_as_such(store):
    from synapse_core.experiments.records import StoredExperiment
    from synapse_core.experiments.store import Entry

    handle = tiny_handle("llama")
    config = ablation_config(handle, PROMPT, "Paris", [HEAD], "London")
    fresh = run_experiment(handle, config, store)
    assert not fresh.outdated
    stale_key = "00000000000000aa"
    store._cache.set(stale_key, Entry(stale_key, "ablation", 1.0, {}, StoredExperiment(config, fresh.result)))
    listed = {s.hash: s for s in list_experiments(store)[0]}
    assert listed[stale_key].outdated and listed[stale_key].engine == ""
    assert not listed[fresh.hash].outdated and listed[fresh.hash].engine.endswith("+schema2")
    reopened = load_experiment(store, stale_key)
    assert reopened.outdated
    again = run_experiment(handle, config, store)
    assert again.hash == fresh.hash and again.from_cache and not again.outdated
