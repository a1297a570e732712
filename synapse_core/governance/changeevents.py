"""OpenMetadata change events -> the mask store: parsing, signature check, and the webhook server.

Events are read as plain dicts, never as the SDK's models: their fields grow across server
versions. Within one event, `incrementalChangeDescription` (this edit) is read before
`changeDescription` (which the server merges over edits made within minutes, so it can describe
an older or a net-zero change); `newValue`/`oldValue` arrive as JSON strings. A tag change on a
Head column is a field named `columns.Head_N.tags`, split with the SDK's FQN grammar.

`python -m synapse_core webhook --port P` serves POSTs from an event subscription on loopback,
checks `X-OM-Signature: sha256=<hex HMAC-SHA256 of the body>` with SYNAPSE_OM_WEBHOOK_SECRET
(answering 401 and touching nothing when it does not match), and applies the tag changes.
The signature covers only the body, so a captured request stays valid: events older than a
window (5 minutes) are refused (409), one already applied (by event id and timestamp) changes
nothing (200, so a server retrying a delivery is not failed), and an event older than one already
applied for the same head changes nothing. A bad Content-Length is answered 400
before anything is read; connections time out; at most MAX_THREADS are served at once.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..common.errors import BadInput, SynapseError
from ..common.files import atomic_write_json, read_json
from .catalog import TAG_FQN, build_catalog, layer_table, parse_head_column
from .maskstore import MaskStore, ModelIdentity, StoreChange, identity_of

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-OM-Signature"
MAX_BODY = 4 << 20  # bytes; an event batch is far smaller
REPLAY_WINDOW_S = 300  # an event older than this (by its own timestamp) is refused
MAX_THREADS = 32  # connections served at once; more are closed at once
SOCKET_TIMEOUT_S = 10  # a connection that sends nothing for this long is closed


@dataclass(frozen=True)
class TagChange:
    """DEFECTIVE added to or removed from one Head column, as an event reported it."""

    layer: int
    head: int
    added: bool  # True: tag added (quarantine); False: tag removed (release)
    user: str | None  # who made the change on the server
    timestamp: int  # epoch ms of the event (0 when absent)


# ---- parsing ---------------------------------------------------------------------------------


def _json(value):
    """A change's value: JSON text (the usual form) or already-parsed JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _has_tag(value) -> bool:
    value = _json(value)
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, str):
        return value == TAG_FQN
    if not isinstance(value, list):
        return False
    return any(isinstance(t, dict) and t.get("tagFQN") == TAG_FQN for t in value)


def _column_of(field_name: str) -> int | None:
    """The head of a `columns.Head_N.tags` field name; None for any other field."""
    from metadata.utils import fqn  # the SDK's FQN grammar; quoted names contain dots

    try:
        parts = [fqn.unquote_name(p) for p in fqn.split(field_name or "")]
    except Exception:  # the grammar raises its own parse errors on names that are not FQNs
        return None
    if len(parts) == 3 and parts[0] == "columns" and parts[2] == "tags":
        return parse_head_column(parts[1])
    return None


def table_layers(model) -> dict[str, int]:
    """{table FQN: layer} of the model's Layer tables, built with the SDK's FQN rules."""
    from metadata.generated.schema.entity.data.table import Table
    from metadata.utils import fqn

    ident = identity_of(model)
    cat = build_catalog(ident.name, ident.n_layers, ident.n_heads)
    return {fqn.build(None, Table, service_name=cat.service, database_name=cat.model, schema_name=cat.schema,
                      table_name=layer_table(layer), skip_es_search=True): layer for layer in range(ident.n_layers)}


def events_in(payload) -> list[dict]:
    """The events of a webhook body: one event, a list of events, or {"data": [...]}."""
    if isinstance(payload, dict) and isinstance(payload.get("data"), list):
        payload = payload["data"]
    if isinstance(payload, dict):
        payload = [payload]
    return [e for e in payload or [] if isinstance(e, dict)] if isinstance(payload, list) else []


def event_time(event: Mapping) -> int:
    """The event's timestamp (epoch ms; 0 when absent); BadInput when it is not a number."""
    stamp = event.get("timestamp")
    if stamp in (None, ""):
        return 0
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float, str)):
        raise BadInput(f"event timestamp {json.dumps(stamp)[:40]} is not a number")
    try:
        return int(stamp)
    except ValueError:
        raise BadInput(f"event timestamp {stamp[:40]!r} is not a number") from None


def tag_changes(event: Mapping, layers: Mapping[str, int], n_heads: int) -> list[TagChange]:
    """The DEFECTIVE tag changes an event carries for this model's Head columns (others: [])."""
    if str(event.get("entityType", "table")).lower() != "table":
        return []
    name = event.get("entityFullyQualifiedName")
    layer = layers.get(name) if isinstance(name, str) else None
    if layer is None:
        return []
    change = event.get("incrementalChangeDescription") or event.get("changeDescription") or {}
    if not isinstance(change, dict):
        return []
    user, stamp = event.get("userName"), event_time(event)
    user = user if isinstance(user, str) else None
    out = []
    for kind in ("fieldsAdded", "fieldsUpdated", "fieldsDeleted"):
        fields_ = change.get(kind)
        for field in fields_ if isinstance(fields_, list) else []:
            if not isinstance(field, dict) or not isinstance(field.get("name", ""), str):
                continue
            head = _column_of(field.get("name", ""))
            if head is None or head >= n_heads:
                continue
            had, has = _has_tag(field.get("oldValue")), _has_tag(field.get("newValue"))
            if (kind == "fieldsAdded" and has) or (kind == "fieldsUpdated" and has and not had):
                out.append(TagChange(layer, head, True, user, stamp))
            elif (kind == "fieldsDeleted" and had) or (kind == "fieldsUpdated" and had and not has):
                out.append(TagChange(layer, head, False, user, stamp))
    return out


def apply_changes(store: MaskStore, model, changes: Iterable[TagChange], skip_heads=frozenset(),
                  applied: dict | None = None) -> StoreChange:
    """Apply tag changes to the mask store in time order; heads in `skip_heads` (a local change
    still waiting in the outbox) are left alone, since local intent wins until it is delivered.
    applied: {"L.H": timestamp of the last change applied to it}, updated; an older change is stale."""
    ident = identity_of(model)
    added, removed = [], []
    for change in sorted(changes, key=lambda c: c.timestamp):
        if (change.layer, change.head) in skip_heads:
            continue
        key = f"{change.layer}.{change.head}"
        if applied is not None:
            if change.timestamp < applied.get(key, 0):
                continue  # a newer change of this head was applied already
            applied[key] = change.timestamp
        by = change.user or "openmetadata"
        if change.added:
            result = store.add(ident, [(change.layer, change.head)], reason=f"tagged {TAG_FQN} in OpenMetadata",
                               by=by, source="openmetadata", keep_existing=True)
        else:
            result = store.remove(ident, [(change.layer, change.head)], by=by, source="openmetadata",
                                  missing_ok=True)
        added.extend(result.added)
        removed.extend(result.removed)
    return StoreChange(tuple(added), tuple(removed))


# ---- signatures and the webhook server -------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    """The X-OM-Signature value OpenMetadata sends: sha256=<hex HMAC-SHA256 of the body>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    if not header or not header.isascii():  # compare_digest refuses non-ASCII text: a 401, not a 500
        return False
    given = header.strip()
    given = given[len("sha256="):] if given.lower().startswith("sha256=") else given
    return hmac.compare_digest(sign(secret, body)[len("sha256="):], given.lower())


def _event_key(event: Mapping, stamp: int) -> str:
    ident = event.get("id")
    if not isinstance(ident, str) or not ident:
        ident = hashlib.sha256(json.dumps(event, sort_keys=True, default=str).encode()).hexdigest()
    return f"{ident}@{stamp}"


def apply_webhook_events(store: MaskStore, model, events: list[dict], layers: Mapping[str, int], skip_heads=(),
                         window_s: float = REPLAY_WINDOW_S, now_ms: int | None = None):
    """Apply pushed events once each, newest intent last:
    (StoreChange, tag changes applied, refusals, duplicates).

    Refused: an event without a timestamp, or older than `window_s` (or as far in the future).
    A duplicate (same id and timestamp as one applied) changes nothing: a replay, or the server
    retrying a delivery. BadInput when an event is malformed (nothing applied)."""
    ident = identity_of(model)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    window_ms = int(window_s * 1000)
    stamped = [(event_time(e), e) for e in events]
    changes_of = [(stamp, e, tag_changes(e, layers, ident.n_heads)) for stamp, e in stamped]  # malformed: raises
    path = store.file(ident, ".webhook.json")
    with store.locked(ident):
        state = read_json(path, {})
        seen = state.get("seen") if isinstance(state.get("seen"), dict) else {}
        heads = state.get("heads") if isinstance(state.get("heads"), dict) else {}
        refused, changes, duplicates = [], [], 0
        for stamp, event, found in changes_of:
            key = _event_key(event, stamp)
            if not stamp:
                refused.append("an event without a timestamp")
            elif abs(now_ms - stamp) > window_ms:
                refused.append(f"event {key} is {abs(now_ms - stamp) / 1000:.0f} s from now, outside the "
                               f"{window_s:g} s window")
            elif key in seen:
                duplicates += 1
            else:
                seen[key] = stamp
                changes.extend(found)
        result = apply_changes(store, ident, changes, skip_heads, heads)
        seen = {k: v for k, v in seen.items() if isinstance(v, int) and now_ms - v <= window_ms}
        atomic_write_json(path, {"seen": seen, "heads": heads})
    return result, len(changes), refused, duplicates


class _BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most `max_threads` connections at once."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, handler, max_threads: int):
        self._slots = threading.BoundedSemaphore(max_threads)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: no thread for an idle or hostile connection
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def make_webhook_server(model, secret: str, store: MaskStore | None = None, host: str = "127.0.0.1",
                        port: int = 0, skip_heads=None, window_s: float = REPLAY_WINDOW_S,
                        max_threads: int = MAX_THREADS, timeout_s: float = SOCKET_TIMEOUT_S) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) that applies signed change events to the model's masks.

    skip_heads: a callable giving the heads with a pending outbox item (left alone).
    >>> server = make_webhook_server(handle, secret="s3cret", port=8766)
    >>> server.serve_forever()
    """
    if not secret:
        raise BadInput("the webhook needs a shared secret: set SYNAPSE_OM_WEBHOOK_SECRET")
    ident: ModelIdentity = identity_of(model)
    store = store or MaskStore()
    layers = table_layers(ident)

    class Handler(BaseHTTPRequestHandler):
        server_version = "SynapseWebhook/1"
        timeout = timeout_s  # socket timeout: a silent client cannot hold a thread

        def log_message(self, fmt, *args):  # the request line only: never headers or bodies
            log.info("webhook %s %s", self.address_string(), fmt % args)

        def _answer(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer(200, {"service": "synapse webhook", "model": ident.name})

        def do_POST(self):
            raw = (self.headers.get("Content-Length") or "0").strip()
            if not raw.isdigit() or int(raw) > MAX_BODY:
                self.close_connection = True
                return self._answer(400, {"error": f"Content-Length {raw[:20]!r} is not a byte count from 0 to "
                                                   f"{MAX_BODY}"})
            try:
                body = self.rfile.read(int(raw))
            except OSError:  # the client went silent (socket timeout) or away
                self.close_connection = True
                return None
            if len(body) < int(raw):
                self.close_connection = True
                return self._answer(400, {"error": f"the body ended after {len(body)} of {raw} bytes"})
            if not signature_ok(secret, body, self.headers.get(SIGNATURE_HEADER)):
                log.warning("webhook: rejected a post with a missing or wrong %s", SIGNATURE_HEADER)
                return self._answer(401, {"error": f"missing or wrong {SIGNATURE_HEADER}"})
            try:
                payload = json.loads(body or b"null")
            except ValueError:
                return self._answer(400, {"error": "the body is not JSON"})
            try:
                result, changes, refused, duplicates = apply_webhook_events(
                    store, ident, events_in(payload), layers, skip_heads() if skip_heads else frozenset(), window_s)
            except BadInput as exc:
                return self._answer(400, {"error": f"malformed event: {exc}"})
            except SynapseError as exc:  # the mask store cannot be read or written: say so, change nothing
                return self._answer(500, {"error": str(exc)})
            if refused:
                log.warning("webhook: refused %d event(s): %s", len(refused), "; ".join(refused[:3]))
            if refused and not changes and not duplicates:
                return self._answer(409, {"error": "nothing applied", "refused": refused})
            # a duplicate is answered 200 (nothing changes): a server retrying a delivery must not fail
            self._answer(200, {"changes": changes, "added": [e.short for e in result.added],
                               "removed": [e.short for e in result.removed], "refused": refused,
                               "duplicates": duplicates})

        do_PUT = do_POST  # a subscription may be configured to PUT

    return _BoundedServer((host, port), Handler, max_threads)
