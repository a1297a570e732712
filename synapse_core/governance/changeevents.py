"""OpenMetadata change events -> the mask store: parsing, signature check, and the webhook server.

Events are read as plain dicts, never as the SDK's models: their fields grow across server
versions. Within one event, `incrementalChangeDescription` (this edit) is read before
`changeDescription` (which the server merges over edits made within minutes, so it can describe
an older or a net-zero change); `newValue`/`oldValue` arrive as JSON strings. A tag change on a
Head column is a field named `columns.Head_N.tags`, split with the SDK's FQN grammar.

`python -m synapse_core webhook --port P` serves POSTs from an event subscription on loopback,
checks `X-OM-Signature: sha256=<hex HMAC-SHA256 of the body>` with SYNAPSE_OM_WEBHOOK_SECRET
(answering 401 and touching nothing when it does not match), and applies the tag changes.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..common.errors import BadInput
from .catalog import TAG_FQN, build_catalog, layer_table, parse_head_column
from .maskstore import MaskStore, ModelIdentity, StoreChange, identity_of

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-OM-Signature"
MAX_BODY = 4 << 20  # bytes; an event batch is far smaller


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
    return any(isinstance(t, dict) and t.get("tagFQN") == TAG_FQN for t in value or [])


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


def tag_changes(event: Mapping, layers: Mapping[str, int], n_heads: int) -> list[TagChange]:
    """The DEFECTIVE tag changes an event carries for this model's Head columns (others: [])."""
    if str(event.get("entityType", "table")).lower() != "table":
        return []
    layer = layers.get(event.get("entityFullyQualifiedName") or "")
    if layer is None:
        return []
    change = event.get("incrementalChangeDescription") or event.get("changeDescription") or {}
    if not isinstance(change, dict):
        return []
    user, stamp = event.get("userName"), int(event.get("timestamp") or 0)
    out = []
    for kind in ("fieldsAdded", "fieldsUpdated", "fieldsDeleted"):
        for field in change.get(kind) or []:
            if not isinstance(field, dict):
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


def apply_changes(store: MaskStore, model, changes: Iterable[TagChange], skip_heads=frozenset()) -> StoreChange:
    """Apply tag changes to the mask store in time order; heads in `skip_heads` (a local change
    still waiting in the outbox) are left alone, since local intent wins until it is delivered."""
    ident = identity_of(model)
    added, removed = [], []
    for change in sorted(changes, key=lambda c: c.timestamp):
        if (change.layer, change.head) in skip_heads:
            continue
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
    if not header:
        return False
    given = header.strip()
    given = given[len("sha256="):] if given.lower().startswith("sha256=") else given
    return hmac.compare_digest(sign(secret, body)[len("sha256="):], given.lower())


def make_webhook_server(model, secret: str, store: MaskStore | None = None, host: str = "127.0.0.1",
                        port: int = 0, skip_heads=None) -> ThreadingHTTPServer:
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
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._answer(413, {"error": f"body of {length} bytes is over {MAX_BODY}"})
            body = self.rfile.read(length)
            if not signature_ok(secret, body, self.headers.get(SIGNATURE_HEADER)):
                log.warning("webhook: rejected a post with a missing or wrong %s", SIGNATURE_HEADER)
                return self._answer(401, {"error": f"missing or wrong {SIGNATURE_HEADER}"})
            try:
                payload = json.loads(body or b"null")
            except ValueError:
                return self._answer(400, {"error": "the body is not JSON"})
            changes = [c for e in events_in(payload) for c in tag_changes(e, layers, ident.n_heads)]
            result = apply_changes(store, ident, changes, skip_heads() if skip_heads else frozenset())
            self._answer(200, {"changes": len(changes), "added": [e.short for e in result.added],
                               "removed": [e.short for e in result.removed]})

        do_PUT = do_POST  # a subscription may be configured to PUT

    return ThreadingHTTPServer((host, port), Handler)
