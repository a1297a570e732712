"""A stand-in for the OpenMetadata REST endpoints the SDK calls, served on loopback from a thread.

    with OMStub(token="t0k3n") as stub:
        config = OMConfig(stub.url, "t0k3n")
        ...
        stub.stop(); stub.start()   # down and up again, same port, same state

Endpoints (under /api/v1): system/version; PUT and GET-by-name of services/databaseServices,
databases, databaseSchemas, tables (also listed, filtered by databaseSchema), classifications,
tags and events/subscriptions; PATCH tables/{id} (JSON patch, If-Match); PUT lineage, GET
lineage/getLineageEdge/{from}/{to}, PATCH lineage/table/{from}/table/{to}; GET events.
Every request but the version needs `Authorization: Bearer <token>` (401 otherwise). Bodies are
validated with the SDK's generated models; a body that fails is answered 400 and kept in
`errors`, which the tests' fixture checks is empty. Event subscriptions with a webhook
destination receive each matching event, signed with X-OM-Signature like the real server.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import jsonpatch
from pydantic import ValidationError

from .state import KINDS, HTTPFailure, StubState

API = "/api/v1/"


class OMStub:
    """The stand-in server. `requests` logs (method, path, status); `fail()` injects errors."""

    def __init__(self, token: str = "stub-token", version: str = "2.0.6", port: int = 0, user: str = "synapse-bot"):
        self.token, self.version, self.user = token, version, user
        self.state = StubState()
        self.state.on_event = self._deliver
        self.requests: list[tuple[str, str, int]] = []
        self.errors: list[str] = []  # request bodies the SDK's models rejected
        self.webhook_posts: list[tuple[str, int]] = []  # (endpoint, status) of webhook deliveries
        self._failures: list[list] = []  # [method, path prefix, status, message, times left]
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- life cycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> "OMStub":
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler(self))
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "OMStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- test helpers --------------------------------------------------------------------------

    def fail(self, method: str, path_prefix: str, status: int, message: str = "injected failure", times: int = 1):
        """Answer the next `times` requests matching method and path prefix (after /api/v1/) with status."""
        self._failures.append([method.upper(), path_prefix, status, message, times])

    def count(self, method: str, path_prefix: str, status: int | None = None) -> int:
        return sum(1 for m, p, s in self.requests if m == method and p.startswith(path_prefix)
                   and (status is None or s == status))

    def table(self, fqn: str) -> dict:
        return self.state.get("tables", fqn)

    def column(self, table_fqn: str, column: str) -> dict:
        return next(c for c in self.table(table_fqn)["columns"] if c["name"] == column)

    def ui_set_tag(self, table_fqn: str, column: str, tag_fqn: str, present: bool, user: str = "alice") -> None:
        """What a person does in the OpenMetadata UI: add or remove a tag on a column."""
        old = self.table(table_fqn)
        new = json.loads(json.dumps(old))
        col = next(c for c in new["columns"] if c["name"] == column)
        col["tags"] = [t for t in col.get("tags", []) if t["tagFQN"] != tag_fqn]
        if present:
            col["tags"].append({"tagFQN": tag_fqn, "source": "Classification", "labelType": "Manual",
                                "state": "Confirmed"})
        self.state.patch("tables", old["id"], jsonpatch.make_patch(old, new).patch, user, None)

    # ---- webhook delivery ----------------------------------------------------------------------

    def _deliver(self, event: dict) -> None:
        for sub in list(self.state.entities["events/subscriptions"].values()):
            fqns, types = _filters(sub)
            if fqns and event["entityFullyQualifiedName"] not in fqns or types and event["eventType"] not in types:
                continue
            for dest in sub.get("destinations", []):
                config = dest.get("config") or {}
                if dest.get("type") != "Webhook" or not config.get("endpoint"):
                    continue
                body = json.dumps(event).encode()
                secret = (config.get("authType") or {}).get("secretKey", "")
                sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                req = urllib.request.Request(config["endpoint"], data=body, method="POST", headers={
                    "Content-Type": "application/json", "X-OM-Signature": sig})
                try:
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        self.webhook_posts.append((config["endpoint"], resp.status))
                except Exception as exc:  # a dead endpoint is recorded, as the server marks it failed
                    self.webhook_posts.append((config["endpoint"], getattr(exc, "code", 0)))


def _filters(sub: dict) -> tuple[set, set]:
    fqns, types = set(), set()
    for flt in (sub.get("input") or {}).get("filters", []):
        for arg in flt.get("arguments", []):
            if arg.get("name") == "fqnList":
                fqns.update(arg.get("input", []))
            if arg.get("name") == "eventTypeList":
                types.update(arg.get("input", []))
    return fqns, types


def _strip_tags(entity: dict, fields: set[str]) -> dict:
    """The server returns tags only when asked for (fields=tags)."""
    if "tags" not in fields:
        entity.pop("tags", None)
        for col in entity.get("columns", []):
            col.pop("tags", None)
    return entity


def _handler(stub: OMStub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: a restart leaves no stale socket

        def log_message(self, *args):  # quiet; requests are kept in stub.requests
            pass

        def _send(self, status: int, payload) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = parts.path[len(API):] if parts.path.startswith(API) else parts.path
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                status, payload = self._route(method, path, query, raw)
            except HTTPFailure as exc:
                status, payload = exc.status, {"code": exc.status, "message": exc.message}
            except ValidationError as exc:
                stub.errors.append(f"{method} {path}: {exc}")
                status, payload = 400, {"code": 400, "message": f"invalid request body: {exc.error_count()} errors"}
            except Exception as exc:  # a bug in the stub: fail loudly
                stub.errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
                status, payload = 500, {"code": 500, "message": f"{type(exc).__name__}: {exc}"}
            stub.requests.append((method, path, status))
            self._send(status, payload)

        def _route(self, method: str, path: str, query: dict, raw: bytes):
            for failure in stub._failures:
                if failure[4] > 0 and failure[0] == method and path.startswith(failure[1]):
                    failure[4] -= 1
                    raise HTTPFailure(failure[2], failure[3])
            if path == "system/version" and method == "GET":
                return 200, {"version": stub.version, "revision": "stub", "timestamp": 0}
            if self.headers.get("Authorization") != f"Bearer {stub.token}":
                raise HTTPFailure(401, "Not Authorized! Token verified failed")
            body = json.loads(raw) if raw else None
            state, user = stub.state, stub.user
            fields = set((query.get("fields") or "").split(","))
            if path == "events" and method == "GET":
                types = set((query.get("entityUpdated") or "").split(",")) - {""}
                return 200, {"data": state.events_since(int(query.get("timestamp", 0)), types)}
            if path == "lineage" and method == "PUT":
                state.put_lineage(body)
                return 200, {}
            segs = path.split("/")
            if segs[:2] == ["lineage", "getLineageEdge"] and method == "GET":
                edge = state.lineage.get((segs[2], segs[3]))
                if edge is None:
                    raise HTTPFailure(404, "lineage edge not found")
                return 200, {"edge": edge}
            if segs[0] == "lineage" and len(segs) == 5 and method == "PATCH":
                state.patch_lineage((segs[2], segs[4]), body)
                return 200, {}
            kind = max((k for k in KINDS if path == k or path.startswith(k + "/")), key=len, default=None)
            if kind is None:
                raise HTTPFailure(404, f"no endpoint {method} /api/v1/{path}")
            rest = path[len(kind) + 1:]
            if not rest and method == "PUT":
                return 200, state.put(kind, body, user)
            if not rest and method == "GET":
                data = [_strip_tags(e, fields) for e in state.list(kind, query)]
                return 200, {"data": data, "paging": {"total": len(data)}}
            if rest.startswith("name/") and method == "GET":
                return 200, _strip_tags(state.get(kind, unquote(rest[len("name/"):])), fields)
            if rest and "/" not in rest and method == "PATCH":
                return 200, state.patch(kind, rest, body, user, self.headers.get("If-Match"))
            if rest and "/" not in rest and method == "GET":
                return 200, _strip_tags(state.get_by_id(kind, rest), fields)
            raise HTTPFailure(405, f"{method} /api/v1/{path} is not supported")

        def do_GET(self):
            self._handle("GET")

        def do_PUT(self):
            self._handle("PUT")

        def do_PATCH(self):
            self._handle("PATCH")

        def do_POST(self):
            self._handle("POST")

    return Handler
