"""The quarantine store: what it records, its audit log, atomic writes under SIGKILL, concurrent
writers, and the outbox of changes waiting for OpenMetadata. No model, no server."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synapse_core import HeadMask
from synapse_core.common.errors import BadInput, StoreError
from synapse_core.common.files import PAUSE_ENV, PAUSE_ON_ENV, append_line, read_lines
from synapse_core.governance.maskstore import MaskEntry, MaskStore, ModelIdentity, identity_of
from synapse_core.governance.omconfig import OMError, OMUnavailable
from synapse_core.governance.outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelIdentity("tiny", "00ff00ff00ff00ff", n_layers=8, n_heads=8)

# A child process that uses the store. It imports the store without the engine package's
# __init__ (which loads transformers: seconds per child); the store itself needs only torch-free
# modules plus spec.py.
CHILD = """
import sys, types, time
from pathlib import Path
pkg = types.ModuleType("synapse_core"); pkg.__path__ = [{pkg!r}]; sys.modules["synapse_core"] = pkg
from synapse_core.governance.maskstore import MaskStore, ModelIdentity
from synapse_core.governance.outbox import Outbox
ident = ModelIdentity("tiny", "00ff00ff00ff00ff", 8, 8)
store = MaskStore({path!r})
outbox = Outbox(store)
go = Path({go!r})
Path(str(go) + "." + {name!r}).touch()  # ready
while not go.exists():
    time.sleep(0.01)
for head in {heads!r}:
    store.add(ident, [head], reason="child " + {name!r}, by={name!r},
              also=(lambda added, removed: outbox.staged(ident, "add", added)) if {queue!r} else None)
"""


def _child(tmp_path, heads, name, go, env=None, queue=False):
    code = CHILD.format(pkg=str(ROOT / "synapse_core"), path=str(tmp_path / "masks"), go=str(go), heads=heads,
                        name=name, queue=queue)
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **(env or {})}, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def store(tmp_path):
    return MaskStore(tmp_path / "masks")


def test_add_records_evidence_and_masks_are_in_force(store, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "os-user")
    change = store.add(TINY, ["3.1", "5.2"], reason="emits ' Paris'", level="both", experiment="a1b2c3d4e5f60718",
                       effect="p 0.81 -> 0.02", prompt="The Eiffel Tower is in", target=" Paris")
    assert [e.short for e in change.added] == ["3.1", "5.2"]
    assert store.masks(TINY) == [HeadMask(3, 1, "both"), HeadMask(5, 2, "both")]
    entry = store.list(TINY)[0]
    assert (entry.reason, entry.experiment, entry.effect, entry.prompt, entry.target) == \
        ("emits ' Paris'", "a1b2c3d4e5f60718", "p 0.81 -> 0.02", "The Eiffel Tower is in", " Paris")
    assert entry.by == "os-user" and entry.at.endswith("+00:00") and entry.source == "local"
    # the list survives a new store object (it is on disk) and is keyed by the weights' fingerprint
    assert MaskStore(store.path).masks(TINY) == store.masks(TINY)
    other = ModelIdentity("tiny", "ffffffffffffffff", 8, 8)  # same name, other weights
    assert store.masks(other) == []


def test_identity_of_a_handle_like_object():
    class Arch:
        n_layers, n_heads = 4, 2

    class Handle:
        name, fingerprint, arch = "m", "abcd", Arch()

    assert identity_of(Handle()) == ModelIdentity("m", "abcd", 4, 2)
    with pytest.raises(BadInput, match="is not a model"):
        identity_of(object())


@pytest.mark.parametrize("call, message", [
    (lambda s: s.add(TINY, ["3.8"], reason="x"), "head 8 does not exist: layer 3 has heads 0-7"),
    (lambda s: s.add(TINY, ["9.0"], reason="x"), "layer 9 does not exist"),
    (lambda s: s.add(TINY, ["3.1"], reason="  "), "needs a reason"),
    (lambda s: s.add(TINY, ["3.1"], reason="x", level="half"), "'half' is not one of"),
    (lambda s: s.add(TINY, ["three"], reason="x"), "is not a head"),
    (lambda s: s.remove(TINY, ["2.2"]), "head 2.2 is not quarantined for tiny"),
])
def test_bad_requests_name_the_bad_value_and_change_nothing(store, call, message):
    with pytest.raises(BadInput, match=message):
        call(store)
    assert store.list(TINY) == [] and store.audit(TINY) == []


def test_readding_the_same_evidence_changes_nothing_but_new_evidence_does(store):
    store.add(TINY, ["1.1"], reason="r", experiment="e1")
    assert not store.add(TINY, ["1.1"], reason="r", experiment="e1").changed
    assert store.add(TINY, ["1.1"], reason="r", experiment="e2").changed
    assert not store.add(TINY, ["1.1"], reason="other", keep_existing=True).changed  # from OpenMetadata
    assert store.list(TINY)[0].experiment == "e2"
    assert len(store.audit(TINY)) == 2


def test_audit_log_records_every_change_in_order(store):
    store.add(TINY, ["1.1", "2.2"], reason="r", by="alice")
    store.remove(TINY, ["1.1"], by="bob")
    store.replace(TINY, [MaskEntry(4, 4, "projection", "from server")], by="sync-user")
    store.clear(TINY, by="carol")
    log = store.audit(TINY)
    assert [(r.action, r.heads, r.by) for r in log] == [
        ("add", ("1.1", "2.2"), "alice"), ("remove", ("1.1",), "bob"),
        ("sync", ("4.4", "2.2"), "sync-user"), ("clear", ("4.4",), "carol")]
    assert log[2].detail == "added 4.4; removed 2.2" and log[0].reason == "r"
    assert store.audit(TINY, limit=1) == log[-1:]
    assert store.list(TINY) == []


def test_replace_keeps_local_evidence_for_heads_in_both(store):
    store.add(TINY, ["1.1"], reason="local reason", experiment="e1")
    store.add(TINY, ["2.2"], reason="gone on the server")
    change = store.replace(TINY, [MaskEntry(1, 1, "projection", "server reason"), MaskEntry(3, 3, "both", "new")])
    assert [e.short for e in change.added] == ["3.3"] and [e.short for e in change.removed] == ["2.2"]
    assert [(e.short, e.reason) for e in store.list(TINY)] == [("1.1", "local reason"), ("3.3", "new")]


def test_damaged_list_is_reported_not_reset(store):
    store.add(TINY, ["1.1"], reason="r")
    path = store.path / f"{TINY.fingerprint}.json"
    path.write_text("{not json")
    with pytest.raises(StoreError, match=str(path.name)):
        store.masks(TINY)
    with pytest.raises(StoreError):
        store.add(TINY, ["2.2"], reason="r")
    assert path.read_text() == "{not json"


def test_audit_log_skips_a_torn_last_line(tmp_path):
    log = tmp_path / "a.jsonl"
    append_line(log, {"n": 1})
    with open(log, "a") as fh:
        fh.write('{"n": 2, "trunc')  # a crash in the middle of an append
    assert read_lines(log) == [{"n": 1}]


def _kill_at(tmp_path, suffix: str, queue: bool):
    """Run a child that quarantines 2.2 and kill it just before it replaces the file ending in `suffix`."""
    marker, go = tmp_path / "paused", tmp_path / "go"
    go.touch()
    child = _child(tmp_path, ["2.2"], "killed", go, env={PAUSE_ENV: str(marker), PAUSE_ON_ENV: suffix}, queue=queue)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert child.poll() is None, child.stderr.read()
            assert time.time() < deadline, "the child never reached the write"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    return Path(marker.read_text())


def test_process_killed_before_its_intent_is_in_place_changes_nothing(store, tmp_path):
    store.add(TINY, ["1.1"], reason="before")
    list_path = store.path / f"{TINY.fingerprint}.json"
    before = list_path.read_text()
    paused = _kill_at(tmp_path, ".intent", queue=False)
    assert "2.2" in paused.read_text() or '"layer": 2' in paused.read_text()  # the intent was fully written...
    assert list_path.read_text() == before  # ...and the process died before it took effect
    assert store.masks(TINY) == [HeadMask(1, 1)] and len(store.audit(TINY)) == 1
    # the kernel released the dead child's lock: the store still works
    store.add(TINY, ["3.3"], reason="after")
    assert store.masks(TINY) == [HeadMask(1, 1), HeadMask(3, 3)]


def test_process_killed_between_list_and_outbox_is_completed_on_the_next_call(store, tmp_path):
    """The probe's lost quarantine: saved in the list but never queued for the server (old code:
    list and outbox written under separate locks, nothing to finish the second write)."""
    store.add(TINY, ["1.1"], reason="before")
    _kill_at(tmp_path, ".outbox.json", queue=True)
    list_path = store.path / f"{TINY.fingerprint}.json"
    assert '"layer": 2' in list_path.read_text()  # the list was written before the kill...
    assert not (store.path / f"{TINY.fingerprint}.outbox.json").exists()  # ...the outbox was not
    box = Outbox(store)
    assert [(i.op, i.head) for i in box.pending(TINY)] == [("add", "2.2")]  # completed by the next read
    assert [(r.action, r.heads, r.by) for r in store.audit(TINY)] == [
        ("add", ("1.1",), store.audit(TINY)[0].by), ("add", ("2.2",), "killed")]  # its audit record, once
    store.add(TINY, ["3.3"], reason="after")
    assert len(store.audit(TINY)) == 3 and store.masks(TINY) == [HeadMask(1, 1), HeadMask(2, 2), HeadMask(3, 3)]


def test_process_killed_before_the_list_is_replaced_is_completed_with_its_audit_record(store, tmp_path):
    store.add(TINY, ["1.1"], reason="before")
    _kill_at(tmp_path, f"{TINY.fingerprint}.json", queue=True)
    assert store.masks(TINY) == [HeadMask(1, 1), HeadMask(2, 2)]
    assert [r.heads for r in store.audit(TINY)] == [("1.1",), ("2.2",)]
    assert [i.head for i in Outbox(store).pending(TINY)] == ["2.2"]


def test_processes_adding_at_once_lose_nothing(store, tmp_path):
    go = tmp_path / "go"
    groups = {f"p{i}": [f"{layer}.{head}" for layer in range(8) for head in range(8)][i::3][:15] for i in range(3)}
    children = [_child(tmp_path, heads, name, go) for name, heads in groups.items()]
    time.sleep(0.5)
    go.touch()  # all start adding at the same moment: 45 read-modify-write cycles interleave
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    held = {e.short: e.by for e in store.list(TINY)}
    assert held == {head: name for name, heads in groups.items() for head in heads}
    assert len(store.audit(TINY)) == 45


# ---- outbox ----------------------------------------------------------------------------------


def _entry(short, reason="r"):
    layer, head = map(int, short.split("."))
    return MaskEntry(layer, head, "projection", reason)


def test_outbox_keeps_the_latest_intent_per_head(store):
    box = Outbox(store)
    box.enqueue(TINY, "add", [_entry("1.1"), _entry("2.2")])
    box.enqueue(TINY, "remove", [_entry("1.1")])
    assert [(i.op, i.head) for i in box.pending(TINY)] == [("add", "2.2"), ("remove", "1.1")]


def test_outbox_delivers_in_order_once_and_stops_at_the_first_failure(store):
    box = Outbox(store)
    box.enqueue(TINY, "add", [_entry("1.1"), _entry("2.2"), _entry("3.3")])
    sent = []

    def flaky(item):
        if item.head == "2.2" and not sent.count("2.2-failed"):
            sent.append("2.2-failed")
            raise OMUnavailable("server down")
        sent.append(item.head)

    first = box.deliver(TINY, flaky)
    assert [i.head for i in first.delivered] == ["1.1"] and first.error == "server down"
    assert [(i.head, i.attempts, i.last_error) for i in box.pending(TINY)] == \
        [("2.2", 1, "server down"), ("3.3", 0, None)]
    second = box.deliver(TINY, flaky)
    assert [i.head for i in second.delivered] == ["2.2", "3.3"] and second.error is None
    assert box.deliver(TINY, flaky).delivered == ()
    assert sent == ["1.1", "2.2-failed", "2.2", "3.3"]  # nothing sent twice
    assert box.pending(TINY) == []


def test_outbox_lets_non_governance_errors_propagate(store):
    box = Outbox(store)
    box.enqueue(TINY, "add", [_entry("1.1")])
    with pytest.raises(ZeroDivisionError):
        box.deliver(TINY, lambda item: 1 / 0)
    assert len(box.pending(TINY)) == 1  # a bug never loses the pending change
    assert issubclass(OMUnavailable, OMError)


@pytest.mark.slow  # writer processes killed at random moments, repeatedly: the slow tier (CI runs it)
def test_writers_killed_at_random_never_leave_a_quarantine_unqueued_or_unaudited(store, tmp_path):
    """The probe of the issue: writers killed at random moments left heads saved but never queued
    (and one without an audit record). Whatever the moment, after the next call every quarantined
    head has its outbox entry and its audit record, exactly once."""
    import random

    rng = random.Random(7)
    go = tmp_path / "go"
    heads = [f"{layer}.{head}" for layer in range(8) for head in range(8)]
    children = [_child(tmp_path, heads[i * 10:(i + 1) * 10], f"w{i}", go, queue=True) for i in range(6)]
    try:
        deadline = time.time() + 120
        while not all(Path(f"{go}.w{i}").exists() for i in range(6)):
            assert time.time() < deadline, "the writers never started"
            time.sleep(0.02)
        go.touch()
        start = time.time()
        for at, child in sorted(zip((rng.uniform(0.0, 0.5) for _ in children), children), key=lambda x: x[0]):
            time.sleep(max(0.0, start + at - time.time()))  # each dies somewhere in its run of adds
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    held = [m.short for m in store.list(TINY)]
    queued = [i.head for i in Outbox(store).pending(TINY)]
    audited = [h for r in store.audit(TINY) for h in r.heads]
    assert sorted(held) == sorted(queued) == sorted(audited)
    assert 0 < len(held) < len(heads)  # the kills did land in the middle
