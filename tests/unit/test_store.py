"""content_hash and ResultStore: stable keys, cache hits, and damaged entries that are reported."""
import pickle
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from synapse_core import HeadMask, Sampling
from synapse_core.common.errors import StoreError
from synapse_core.experiments.store import Entry, ResultStore, content_hash

BASE = {
    "model": "tiny", "fingerprint": "0123456789abcdef", "dtype": "torch.float32", "prompt": "the cat",
    "max_new_tokens": 5, "masks": [HeadMask(0, 1), HeadMask(1, 2, "attention")],
    "sampling": Sampling(temperature=0.1, top_k=0, seed=0), "capture_attention": True,
}


def _with(**changes):
    return dict(BASE, **changes)


def test_hash_is_stable_for_equal_configs():
    again = {k: BASE[k] for k in reversed(list(BASE))}  # same content, other key order
    again["masks"] = [HeadMask(0, 1), HeadMask(1, 2, "attention")]  # equal, not identical objects
    assert content_hash("trace", BASE) == content_hash("trace", again)
    assert len(content_hash("trace", BASE)) == 16


@pytest.mark.parametrize("changed", [
    _with(prompt="the cat "),
    _with(prompt="The cat"),
    _with(masks=[HeadMask(0, 1)]),
    _with(masks=[HeadMask(0, 1), HeadMask(1, 2, "projection")]),
    _with(masks=[HeadMask(0, 1), HeadMask(1, 3, "attention")]),
    _with(sampling=Sampling(temperature=0.10000001, top_k=0, seed=0)),
    _with(sampling=Sampling(temperature=0.1, top_k=0, seed=1)),
    _with(sampling=Sampling(temperature=0.1, top_k=5, seed=0)),
    _with(max_new_tokens=6),
    _with(fingerprint="0123456789abcdee"),
    _with(capture_attention=False),
    _with(dtype="torch.bfloat16"),
])
def test_hash_changes_with_any_change(changed):
    assert content_hash("trace", changed) != content_hash("trace", BASE)


def test_hash_depends_on_the_kind():
    assert content_hash("trace", BASE) != content_hash("ablation", BASE)


def test_hash_keeps_floats_exact():
    assert content_hash("k", {"t": 0.1}) != content_hash("k", {"t": 0.10000001})
    assert content_hash("k", {"t": 0.1}) == content_hash("k", {"t": 1 / 10})


def test_numpy_scalars_hash_like_the_python_numbers_they_equal():
    assert content_hash("k", {"t": np.float64(0.1), "n": np.int64(3)}) == content_hash("k", {"t": 0.1, "n": 3})
    assert content_hash("k", {"t": np.float32(0.5)}) == content_hash("k", {"t": 0.5})


def test_hash_of_dataclass_configs():
    @dataclass(frozen=True)
    class Config:
        prompt: str
        heads: tuple

    assert content_hash("k", Config("hi", (1, 2))) == content_hash("k", Config("hi", (1, 2)))
    assert content_hash("k", Config("hi", (1, 2))) != content_hash("k", Config("hi", (2, 1)))


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "results")
    yield s
    s.close()


def test_get_or_compute_caches(store):
    calls = []

    def compute():
        calls.append(1)
        return {"answer": 42}

    first, cached1, notes1 = store.get_or_compute("trace", BASE, compute, summary={"prompt": "the cat"})
    second, cached2, notes2 = store.get_or_compute("trace", _with(), compute)
    assert (cached1, cached2) == (False, True)
    assert calls == [1]
    assert notes1 == notes2 == []
    assert second.result == {"answer": 42} and second.key == first.key == content_hash("trace", BASE)
    assert second.summary == {"prompt": "the cat"} and second.kind == "trace"
    third, cached3, _ = store.get_or_compute("trace", _with(prompt="a dog"), compute)
    assert not cached3 and calls == [1, 1] and third.key != first.key


def test_results_survive_reopening(tmp_path):
    s = ResultStore(tmp_path / "r")
    s.put("k1", "trace", [1, 2, 3])
    s.close()
    s = ResultStore(tmp_path / "r")
    assert s.get("k1").result == [1, 2, 3]
    assert s.get("absent") is None
    assert s.delete("k1") and s.get("k1") is None
    s.close()


def _big_result():
    return {"blob": np.random.default_rng(0).bytes(100_000)}  # big enough for diskcache's value files


def _value_files(store) -> list[Path]:
    return sorted(p for p in Path(store.path).rglob("*.val"))


def test_garbage_in_a_value_file_is_reported_and_recomputed(store):
    entry, _, _ = store.get_or_compute("trace", BASE, _big_result)
    (value_file,) = _value_files(store)
    value_file.write_bytes(b"\x00garbage, not a pickle\xff" * 10)
    with pytest.raises(StoreError, match=entry.key):
        store.get(entry.key)
    again, from_cache, notes = store.get_or_compute("trace", BASE, lambda: {"fresh": True})
    assert not from_cache
    assert again.result == {"fresh": True}
    assert len(notes) == 1 and entry.key in notes[0] and "computed again" in notes[0]
    assert store.get(entry.key).result == {"fresh": True}  # and it was replaced


def test_a_missing_value_file_is_reported(store):
    entry, _, _ = store.get_or_compute("trace", BASE, _big_result)
    (value_file,) = _value_files(store)
    value_file.unlink()
    with pytest.raises(StoreError, match="missing"):
        store.get(entry.key)
    _, from_cache, notes = store.get_or_compute("trace", BASE, lambda: "fresh")
    assert not from_cache and len(notes) == 1


def test_garbage_in_a_small_inline_entry_is_reported(store):
    store.put("small", "trace", {"x": 1})
    store.close()
    with sqlite3.connect(Path(store.path) / "cache.db") as db:
        db.execute("UPDATE Cache SET value = ? WHERE key = ?", (b"\x80\x05garbage", "small"))
    with pytest.raises(StoreError, match="small"):
        store.get("small")


def test_a_value_that_is_not_an_entry_is_reported(store):
    store._cache.set("foreign", {"not": "an entry"})
    with pytest.raises(StoreError, match="not a Synapse result"):
        store.get("foreign")


class _Unpicklable:
    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("cannot rebuild this object")


def test_entries_skip_and_report_unreadable_ones(store):
    store.put("old", "trace", 1, {"n": 1})
    store.put("new", "ablation", 2, {"n": 2})
    store._cache.set("foreign", "just a string")
    store._cache.set("broken", Entry("broken", "trace", 0.0, {}, _Unpicklable()))
    good, bad = store.entries()
    assert [e.key for e in good] == ["new", "old"]  # newest first
    assert len(bad) == 2
    assert any("foreign" in msg for msg in bad) and any("broken" in msg and "RuntimeError" in msg for msg in bad)
    assert sorted(store.keys()) == ["broken", "foreign", "new", "old"]


def test_store_pickles_with_the_highest_protocol(store):
    store.put("k", "trace", {"x": 1.5})
    with sqlite3.connect(Path(store.path) / "cache.db") as db:
        (raw,) = db.execute("SELECT value FROM Cache WHERE key = 'k'").fetchone()
    assert pickle.loads(raw).result == {"x": 1.5}


# ---- engine versions, one computation per key, a damaged database ---------------------------------


def test_hash_depends_on_the_engine_version(monkeypatch):
    import synapse_core.common.hashing as hashing

    now = content_hash("trace", BASE)
    assert hashing.engine_version().endswith(f"+schema{hashing.RESULT_SCHEMA}")
    monkeypatch.setattr(hashing, "RESULT_SCHEMA", hashing.RESULT_SCHEMA + 1)
    hashing.engine_version.cache_clear()
    try:
        assert content_hash("trace", BASE) != now
    finally:
        monkeypatch.undo()
        hashing.engine_version.cache_clear()
    assert content_hash("trace", BASE) == now


def test_a_result_of_another_engine_is_never_served_and_is_listed_as_such(store, monkeypatch):
    import synapse_core.experiments.store as store_module

    key = content_hash("k", {"a": 1})
    store._cache.set(key, Entry(key, "k", 1.0, {}, "old answer", engine="0.1.0+schema1"))  # an older engine's
    old = store.get(key)
    assert old.outdated and old.engine == "0.1.0+schema1"
    entry, from_cache, notes = store.get_or_compute("k", {"a": 1}, lambda: "new answer")
    assert (entry.result, from_cache, entry.outdated) == ("new answer", False, False)
    assert any("made by another engine (0.1.0+schema1)" in n for n in notes)
    monkeypatch.setattr(store_module, "engine_version", lambda: "9.9.9+schema9")
    assert store.get(key).outdated  # made by 0.2.x: older than this engine


def test_two_sessions_asking_for_the_same_missing_result_compute_it_once(store, tmp_path):
    import threading
    import time

    other = ResultStore(tmp_path / "results")  # a second session: its own connection to the same store
    computed, start, out = [], threading.Barrier(2), {}

    def compute():
        computed.append(1)
        time.sleep(0.3)  # long enough for the other session to ask meanwhile
        return "answer"

    def ask(name, s):
        start.wait()
        out[name] = s.get_or_compute("k", {"a": 2}, compute)

    threads = [threading.Thread(target=ask, args=(n, s)) for n, s in (("one", store), ("two", other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert len(computed) == 1
    assert sorted(from_cache for _, from_cache, _ in out.values()) == [False, True]
    assert {entry.result for entry, _, _ in out.values()} == {"answer"}


def test_a_garbage_database_file_is_moved_aside_and_the_store_rebuilt(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "cache.db").write_bytes(b"\x00garbage, not SQLite\xff" * 200)
    s = ResultStore(folder)
    entries, problems = s.entries()
    assert entries == [] and len(problems) == 1 and "moved aside to cache.db.damaged-" in problems[0]
    assert [p.name.startswith("cache.db.damaged-") for p in folder.iterdir() if "damaged" in p.name] == [True]
    entry, from_cache, notes = s.get_or_compute("k", {"a": 3}, lambda: "fresh")
    assert not from_cache and len(notes) == 1 and "could not be read" in notes[0]
    assert s.get(entry.key).result == "fresh" and s.entries()[1] == []  # said once
    s.close()
