"""Governance against servers and clients that misbehave: a server that accepts and never answers,
one that trickles bytes, one that was never bootstrapped, a quarantine made while a sync reads the
server, and the webhook under replays, stale events, bad headers and idle connections.

Every server here listens on loopback only and stops by itself at the end of its test."""
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the omstub package

from omstub import OMStub  # noqa: E402
from synapse_core.governance.catalog import TAG_FQN  # noqa: E402
from synapse_core.governance.changeevents import make_webhook_server, sign  # noqa: E402
from synapse_core.governance.maskstore import MaskStore, ModelIdentity  # noqa: E402
from synapse_core.governance.omconfig import OMConfig, OMRejected, OMUnavailable  # noqa: E402
from synapse_core.governance.service import Governance  # noqa: E402

TOKEN = "eyJraWQiOiJzdHViIn0.ZmF1bHRz.sig-faults"
SECRET = "webhook-shared-secret"
MODEL = ModelIdentity("tiny.model-v1", "0123456789abcdef", n_layers=3, n_heads=4)
LAYER = {i: f'Synapse_Neural_Service."tiny.model-v1".Transformer_Graph.Layer_{i}' for i in range(3)}
DEADLINE = 1.5  # seconds; the commands' default is 10
SLACK = 4.0  # two shared CPU cores: scheduling, not the server, may take this long


@pytest.fixture
def store(tmp_path):
    return MaskStore(tmp_path / "masks")


class SilentServer:
    """Accepts connections on loopback and answers nothing, or (trickle) one byte every `every` s."""

    def __init__(self, trickle: bool = False, every: float = 0.2):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.trickle, self.every = trickle, every
        self.stop = threading.Event()
        self.closed_by_client = []  # one entry per connection the client cut
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._hold, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _hold(self, conn):
        conn.settimeout(self.every)
        with conn:
            sent = 0
            response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            while not self.stop.is_set():
                try:
                    if conn.recv(65536) == b"":
                        self.closed_by_client.append(True)
                        return
                except TimeoutError:
                    pass
                except OSError:
                    self.closed_by_client.append(True)
                    return
                if self.trickle:
                    try:
                        conn.sendall(response[sent % len(response):][:1])
                    except OSError:
                        self.closed_by_client.append(True)
                        return
                    sent += 1

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("trickle", [False, True], ids=["never-answers", "trickles"])
def test_a_hung_server_never_holds_a_command_past_its_deadline(store, trickle):
    """Old code: 143 s for a server that never answers (the SDK's transport retried), and no bound at
    all for one that trickles; here every command ends by its deadline and the change is in force."""
    server = SilentServer(trickle=trickle)
    try:
        gov = Governance(MODEL, OMConfig(server.url, TOKEN), store=store, user="tester", deadline_s=DEADLINE)
        for name, call in [("quarantine", lambda: gov.quarantine(["1.1"], reason="r")), ("status", gov.status)]:
            start = time.monotonic()
            result = call()
            took = time.monotonic() - start
            assert took < DEADLINE + SLACK, f"{name} took {took:.1f} s"
            assert f"did not answer within {DEADLINE:g} s" in (result.error or ""), (name, result)
        assert [m.short for m in gov.masks()] == ["1.1"] and [i.head for i in gov.pending()] == ["1.1"]
        start = time.monotonic()
        with pytest.raises(OMUnavailable, match="did not answer within"):
            gov.sync()
        assert time.monotonic() - start < DEADLINE + SLACK
        assert [m.short for m in gov.masks()] == ["1.1"]
        deadline = time.monotonic() + 5
        while not server.closed_by_client and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.closed_by_client  # the client cut its connections: nothing lingers
    finally:
        server.close()


@pytest.fixture
def stub():
    with OMStub(token=TOKEN) as server:
        yield server
    assert server.errors == [], server.errors


def test_sync_with_a_server_that_was_never_bootstrapped_releases_nothing(stub, store):
    """Old code read "no tables" as "no defects", released every head and exited 0."""
    store.add(MODEL, ["1.1", "2.3"], reason="found locally")
    gov = Governance(MODEL, OMConfig(stub.url, TOKEN), store=store, user="tester")
    with pytest.raises(OMRejected, match="Bootstrap first"):
        gov.sync()
    assert [m.short for m in gov.masks()] == ["1.1", "2.3"]
    gov.bootstrap()
    stub.state.entities["tables"].pop(LAYER[2])  # a catalog that lost a layer is not clean either
    with pytest.raises(OMRejected, match=r"lacks the tables of layer\(s\) 2"):
        gov.sync()
    assert [m.short for m in gov.masks()] == ["1.1", "2.3"]


def test_a_quarantine_made_while_sync_reads_the_server_survives(stub, store):
    """Old code replaced the list with the server's, read before the quarantine reached it."""
    config = OMConfig(stub.url, TOKEN)
    gov = Governance(MODEL, config, store=store, user="syncer")
    gov.bootstrap()
    other = Governance(MODEL, config, store=store, user="alice")  # another session, same machine
    real_client = gov.client

    def client():
        c = real_client()
        read = c.defects

        def defects(catalog):
            found = read(catalog)  # the server has been read...
            assert other.quarantine(["0.2"], reason="made during the sync").delivered == 1  # ...then this lands
            return found

        c.defects = defects
        return c

    gov.client = client
    report = gov.sync()
    assert report.removed == () and [m.short for m in gov.masks()] == ["0.2"]


def test_a_quarantine_made_while_poll_reads_the_feed_survives_older_events(stub, store):
    """Old code applied the feed's older "tag removed" over a quarantine made (and delivered) while
    the feed was being read: released locally, tagged on the server."""
    config = OMConfig(stub.url, TOKEN)
    gov = Governance(MODEL, config, store=store, user="poller")
    gov.bootstrap()
    gov.poll()  # the cursor after the bootstrap's events
    stub.ui_set_tag(LAYER[0], "Head_1", TAG_FQN, present=True, user="alice")
    stub.ui_set_tag(LAYER[0], "Head_1", TAG_FQN, present=False, user="alice")
    other = Governance(MODEL, config, store=store, user="bob")
    real_client = gov.client

    def client():
        c = real_client()
        read = c.events

        def events(since):
            found = read(since)  # the feed has been read: add, then remove of 0.1...
            assert other.quarantine(["0.1"], reason="made during the poll").delivered == 1  # ...then this
            return found

        c.events = events
        return c

    gov.client = client
    report = gov.poll()
    assert report.changes == 2 and report.removed == ()
    assert [m.short for m in gov.masks()] == ["0.1"]
    assert TAG_FQN in [t["tagFQN"] for t in stub.column(LAYER[0], "Head_1").get("tags", [])]


def test_a_malformed_event_in_the_feed_is_skipped_not_a_traceback(stub, store):
    gov = Governance(MODEL, OMConfig(stub.url, TOKEN), store=store, user="poller")
    gov.bootstrap()
    gov.poll()
    stub.ui_set_tag(LAYER[2], "Head_3", TAG_FQN, present=True, user="alice")
    for key in ("changeDescription", "incrementalChangeDescription"):  # a server bug: old code died on it
        stub.state.events[-1][key] = {"fieldsAdded": 5}
    stub.ui_set_tag(LAYER[2], "Head_0", TAG_FQN, present=True, user="alice")
    report = gov.poll()
    assert report.events == 2 and report.added == ("2.0",)  # the good event still applied


# ---- the webhook -----------------------------------------------------------------------------


@pytest.fixture
def webhook(store):
    server = make_webhook_server(MODEL, SECRET, store, port=0, max_threads=4, timeout_s=1.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _event(head: int, present: bool, at_ms: int, event_id: str) -> dict:
    tags = json.dumps([{"tagFQN": TAG_FQN}])
    change = {"fieldsAdded": [{"name": f"columns.Head_{head}.tags", "newValue": tags}]} if present else \
        {"fieldsDeleted": [{"name": f"columns.Head_{head}.tags", "oldValue": tags}]}
    return {"id": event_id, "eventType": "entityUpdated", "entityType": "table", "entityFullyQualifiedName": LAYER[1],
            "timestamp": at_ms, "userName": "alice", "changeDescription": change}


def _post(server, payload) -> tuple[int, dict]:
    body = json.dumps(payload).encode()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    request = urllib.request.Request(url, data=body, headers={"X-OM-Signature": sign(SECRET, body)})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _now_ms() -> int:
    return int(time.time() * 1000)


def test_a_captured_event_cannot_be_replayed(webhook, store):
    """Old code: the signature covers only the body, so a captured "tag removed" released the head
    again at any later time."""
    removed = _event(1, False, _now_ms(), "e-remove")
    store.add(MODEL, ["1.1"], reason="r")
    assert _post(webhook, removed)[1]["removed"] == ["1.1"]
    store.add(MODEL, ["1.1"], reason="quarantined again")
    status, answer = _post(webhook, removed)  # the same signed request, replayed
    assert status == 200 and answer["duplicates"] == 1 and answer["removed"] == []  # acknowledged, not applied
    assert [m.short for m in store.list(MODEL)] == ["1.1"]


def test_an_old_event_is_refused_even_when_signed(webhook, store):
    store.add(MODEL, ["1.1"], reason="r")
    status, answer = _post(webhook, _event(1, False, _now_ms() - 10 * 60 * 1000, "e-old"))
    assert status == 409 and "outside the 300 s window" in answer["refused"][0]
    assert [m.short for m in store.list(MODEL)] == ["1.1"]


def test_events_apply_in_timestamp_order_across_requests(webhook, store):
    now = _now_ms()
    assert _post(webhook, _event(2, True, now, "e-new-add"))[1]["added"] == ["1.2"]
    status, answer = _post(webhook, _event(2, False, now - 5000, "e-older-remove"))  # arrives late
    assert status == 200 and answer["removed"] == []
    assert [m.short for m in store.list(MODEL)] == ["1.2"]


def _raw(server, request: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=wait) as conn:
        conn.sendall(request)  # and the connection stays open: nothing more is sent
        try:
            return conn.recv(4096)
        except TimeoutError:
            return b"(no answer)"


@pytest.mark.parametrize("length", [b"-1", b"abc", b"99999999999"])
def test_a_bad_content_length_is_answered_400_before_reading(webhook, length):
    """Old code: -1 read until the client hung up (forever); abc dropped the connection with a traceback."""
    answer = _raw(webhook, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400"), answer


def test_a_non_ascii_signature_is_401_and_a_malformed_signed_event_400(webhook, store):
    body = b"{}"
    answer = _raw(webhook, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-OM-Signature: sha256=\xc3\xa9\r\n\r\n"
                  + body)
    assert answer.startswith(b"HTTP/1.0 401"), answer
    for event in ({**_event(1, True, _now_ms(), "m1"), "timestamp": "abc"},
                  {**_event(1, True, _now_ms(), "m2"), "entityFullyQualifiedName": ["not", "a", "name"]}):
        status, answer = _post(webhook, event)
        assert status in (400, 200) and "Traceback" not in json.dumps(answer)
    assert _post(webhook, {**_event(1, True, _now_ms(), "m3"), "timestamp": "abc"})[0] == 400
    assert store.list(MODEL) == []


def test_idle_connections_time_out_and_never_take_more_than_the_thread_limit(webhook):
    before = {t.ident for t in threading.enumerate()}
    idle = [socket.create_connection(("127.0.0.1", webhook.server_address[1])) for _ in range(20)]
    try:
        time.sleep(0.5)
        serving = [t for t in threading.enumerate() if t.ident not in before and "process_request" in t.name]
        assert len(serving) <= 4  # old code: one thread per connection, held forever
        idle[0].settimeout(10)
        assert idle[0].recv(10) == b""  # the server closed the silent connection by itself
    finally:
        for conn in idle:
            conn.close()
    time.sleep(1.5)
    assert _post(webhook, _event(3, True, _now_ms(), "after-idle"))[0] == 200  # and serves again
