"""Governance: quarantine heads, keep the quarantine in OpenMetadata, and take its changes back.

One object per model for the page and the CLI. Every change takes effect locally first (the
mask store, in force for every later run) together with its outbox entry, under the model's one
lock; the entry is sent at once when OpenMetadata answers and otherwise on the next sync, so the
page can say plainly what happened. No lock is held while the server is asked, and each command's
time with the server is bounded by one deadline (omtransport.DEADLINE_S). Without a configured server (embedded mode) changes wait in the outbox for
a future server. Results are frozen dataclasses; nothing is cached on the object but its settings.

>>> gov = Governance(handle, config_from_env(), user="alice")
>>> gov.quarantine(["3.1"], reason="emits ' Paris' on any prompt", experiment="a1b2c3d4e5f60718").message
'Quarantined 3.1. OpenMetadata at http://localhost:8585 has the DEFECTIVE tag.'
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from importlib.metadata import PackageNotFoundError, version

from ..arch.spec import MASK_LEVELS
from ..common.errors import BadInput, SynapseError
from ..common.files import atomic_write_json, read_json
from .catalog import Catalog, CatalogRow, build_catalog, catalog_rows, thought_path_edges
from .changeevents import apply_changes, event_time, table_layers, tag_changes
from .featurestore import FeatureQuarantine
from .maskstore import (
    AuditRecord,
    MaskEntry,
    MaskStore,
    ModelIdentity,
    StoreChange,
    current_user,
    identity_of,
    now_iso,
)
from .omconfig import HOST_ENV, TOKEN_ENV, OMConfig, OMError, config_from_env
from .outbox import Delivery, Outbox, OutboxItem

log = logging.getLogger(__name__)
EMBEDDED = "embedded"
BOOTSTRAP_DEADLINE_S = 60.0  # the catalog of a 30-layer model is ~150 requests; every other action: 10 s
OPENMETADATA = "openmetadata"
FIRST_POLL_LOOKBACK_MS = 24 * 3600 * 1000  # a first poll reads a day back; `om sync` gives the full state


@dataclass(frozen=True)
class GovernanceStatus:
    """Where the quarantine is governed, and whether that place answers."""

    mode: str  # "embedded" (no server configured) or "openmetadata"
    server: str | None  # the server's URL (never the token)
    connected: bool  # the server answered and its version is compatible
    server_version: str | None
    client_version: str | None  # the SDK's version (openmetadata-ingestion)
    masked: int  # heads quarantined locally
    pending: int  # changes waiting in the outbox
    error: str | None  # why the server is not usable, in words a user can act on
    message: str


@dataclass(frozen=True)
class ChangeReport:
    """What a quarantine, release or clear did, locally and on the server."""

    action: str  # "quarantine" | "release" | "clear"
    changed: tuple[str, ...]  # "L.H" of the heads whose local entry changed
    mode: str
    delivered: int  # server changes confirmed by this call
    pending: int  # server changes still waiting in the outbox
    error: str | None  # why the server did not take them (None when delivered or embedded)
    message: str  # one plain sentence or two for the page


@dataclass(frozen=True)
class SyncReport:
    """What a sync did: outbox sent, then the local list made equal to the server's."""

    added: tuple[MaskEntry, ...]  # heads tagged on the server, now quarantined locally
    removed: tuple[MaskEntry, ...]  # heads no longer tagged on the server, now released locally
    delivered: int  # outbox items sent first
    server: str
    message: str


@dataclass(frozen=True)
class PollReport:
    """What one read of the server's change-event feed did."""

    events: int  # events read
    changes: int  # DEFECTIVE tag changes on this model's heads among them
    added: tuple[str, ...]  # "L.H" quarantined locally as a result
    removed: tuple[str, ...]
    since: int  # the feed position (epoch ms) the next poll starts from


def _sdk_version() -> str | None:
    try:
        return version("openmetadata-ingestion")
    except PackageNotFoundError:
        return None


def _heads(entries) -> str:
    return ", ".join(e.short for e in entries)


class Governance:
    """The quarantine of one model: the mask store, the outbox and (when configured) OpenMetadata.

    model: a ModelHandle or a ModelIdentity (no weights needed).
    config: an OMConfig, None for embedded mode, or "env" (default) to read SYNAPSE_OM_HOST/TOKEN.
    user: who makes the changes (the page's session name); default the OS user.
    """

    def __init__(self, model, config: OMConfig | None | str = "env", store: MaskStore | None = None,
                 user: str | None = None, deadline_s: float | None = None):
        """deadline_s: one command's whole time with the server (default omtransport.DEADLINE_S)."""
        self.identity: ModelIdentity = identity_of(model)
        self.config: OMConfig | None = config_from_env() if config == "env" else config
        self.store = store or MaskStore()
        self.outbox = Outbox(self.store)
        self.user = user or current_user()
        self.deadline_s = deadline_s

    def __repr__(self) -> str:
        return f"Governance(model={self.identity.name!r}, mode={self.mode!r})"

    @property
    def mode(self) -> str:
        return OPENMETADATA if self.config else EMBEDDED

    # ---- reading -----------------------------------------------------------------------------

    def masks(self) -> list[MaskEntry]:
        """The quarantined heads with their evidence."""
        return self.store.list(self.identity)

    def audit(self, limit: int | None = None) -> list[AuditRecord]:
        return self.store.audit(self.identity, limit)

    def pending(self) -> list[OutboxItem]:
        return self.outbox.pending(self.identity)

    def catalog(self, roles=None) -> Catalog:
        """The model as catalog data; roles: {(layer, head): "what it does"} where known."""
        ident = self.identity
        return build_catalog(ident.name, ident.n_layers, ident.n_heads, roles, ident.fingerprint,
                             FeatureQuarantine(self.store).list(ident))

    def view(self, roles=None) -> list[CatalogRow]:
        """The embedded catalog: every column, quarantined heads tagged DEFECTIVE."""
        return catalog_rows(self.catalog(roles), self.masks())

    def client(self, deadline_s: float | None = None):
        """A fresh connection to the configured server (version checked); OMError when unusable.
        deadline_s: its whole time with the server (default: the Governance's, else 10 s)."""
        if not self.config:
            raise OMError(f"no OpenMetadata server is configured: set {HOST_ENV} and {TOKEN_ENV} "
                          "(or [openmetadata] host/token in .streamlit/secrets.toml)")
        from .openmetadata import OMClient  # imports the SDK: only when a server is configured

        deadline_s = deadline_s or self.deadline_s
        return OMClient(self.config) if deadline_s is None else OMClient(self.config, deadline_s=deadline_s)

    def status(self) -> GovernanceStatus:
        masked, pending = len(self.masks()), len(self.pending())
        if not self.config:
            return GovernanceStatus(EMBEDDED, None, False, None, _sdk_version(), masked, pending, None,
                                    f"Embedded: the quarantine lives in this machine's mask store ({masked} head(s)). "
                                    f"Set {HOST_ENV} and {TOKEN_ENV} to govern it in OpenMetadata.")
        try:
            client = self.client()
        except OMError as exc:
            return GovernanceStatus(OPENMETADATA, self.config.server, False, None, _sdk_version(), masked, pending,
                                    str(exc), f"OpenMetadata is not usable: {exc}")
        try:
            client.check_token()  # the version endpoint answers anyone
        except OMError as exc:
            client.close()
            return GovernanceStatus(OPENMETADATA, self.config.server, False, client.server_version,
                                    client.client_version, masked, pending, str(exc), f"OpenMetadata is not usable: {exc}")
        try:
            return GovernanceStatus(OPENMETADATA, self.config.server, True, client.server_version,
                                    client.client_version, masked, pending, None,
                                    f"OpenMetadata {client.server_version} at {self.config.server}; "
                                    f"{pending} change(s) waiting to be sent.")
        finally:
            client.close()

    # ---- changing ----------------------------------------------------------------------------

    def _send(self, client, catalog: Catalog):
        def send(item: OutboxItem):
            if item.op == "add":
                client.set_defective(catalog, item.entry)
            else:
                client.clear_defective(catalog, item.entry.layer, item.entry.head)
        return send

    def deliver(self) -> Delivery:
        """Send the outbox now; a server that cannot be reached leaves it as it is (Delivery.error)."""
        pending = tuple(self.pending())
        if not self.config:
            return Delivery((), pending, None)
        try:
            client = self.client()
        except OMError as exc:
            return Delivery((), pending, str(exc))
        try:
            return self.outbox.deliver(self.identity, self._send(client, self.catalog()), self._deadline(client))
        finally:
            client.close()

    @staticmethod
    def _deadline(client) -> float | None:
        deadline = getattr(client, "_deadline", None)
        return deadline and time.monotonic() + deadline.remaining()

    def _queue(self, op: str, added, removed) -> dict:
        """The outbox entries of a change, written with it (see MaskStore._change's `also`)."""
        return self.outbox.staged(self.identity, op, added if op == "add" else removed)

    def _report(self, action: str, verb: str, change: StoreChange, op: str) -> ChangeReport:
        entries = change.added if op == "add" else change.removed
        changed = tuple(e.short for e in entries)
        local = f"{verb} {_heads(entries)}." if entries else f"Nothing to change: {action} left the list as it was."
        try:
            delivery = self.deliver()
        except SynapseError as exc:  # the change is made and queued: report, never fail half-done
            delivery = Delivery((), tuple(self.outbox.pending(self.identity)), str(exc))
        pending = len(delivery.pending)
        if not self.config:
            tail = f" Embedded mode: {pending} change(s) kept in the outbox for a future OpenMetadata sync." \
                if pending else ""
        elif delivery.error:
            tail = (f" It is in force locally now, but not yet in OpenMetadata: {delivery.error}. "
                    f"{pending} change(s) wait in the outbox and go out on the next sync.")
        else:
            tail = f" OpenMetadata at {self.config.server} is up to date." if delivery.delivered else ""
        return ChangeReport(action, changed, self.mode, len(delivery.delivered), pending, delivery.error,
                            local + tail)

    def quarantine(self, heads, reason: str, level: str = "projection", experiment: str | None = None,
                   effect: str | None = None, prompt: str | None = None, target: str | None = None,
                   cost: str | None = None) -> ChangeReport:
        """Quarantine heads ("L.H", HeadRef or (layer, head)) with the evidence that justified it; `cost`
        is the cost report's hash and verdict (experiments.costs.evidence), kept with each head."""
        change = self.store.add(self.identity, heads, reason=reason, level=level, experiment=experiment,
                                effect=effect, prompt=prompt, target=target, by=self.user,
                                also=partial(self._queue, "add"), cost=cost)
        return self._report("quarantine", "Quarantined", change, "add")

    def release(self, heads) -> ChangeReport:
        """Un-quarantine heads: every later run uses them again."""
        change = self.store.remove(self.identity, heads, by=self.user, also=partial(self._queue, "remove"))
        return self._report("release", "Released", change, "remove")

    def clear(self) -> ChangeReport:
        """Release every head of the model (the page asks for confirmation first)."""
        change = self.store.clear(self.identity, by=self.user, also=partial(self._queue, "remove"))
        return self._report("clear", "Released", change, "remove")

    # ---- OpenMetadata --------------------------------------------------------------------------

    def bootstrap(self, roles=None):
        """Create or update the model's catalog on the server (idempotent), then send the outbox.

        Returns openmetadata.BootstrapReport; raises OMError when the server is not usable. It sends
        about five requests per layer, so its deadline is longer than other actions' (60 s)."""
        client = self.client(max(self.deadline_s or 0, BOOTSTRAP_DEADLINE_S))
        try:
            catalog = self.catalog(roles)
            report = client.bootstrap(catalog)
            delivery = self.outbox.deliver(self.identity, self._send(client, catalog), self._deadline(client))
        finally:
            client.close()
        return replace(report, delivered=len(delivery.delivered), pending=len(delivery.pending),
                       error=delivery.error)

    def sync(self) -> SyncReport:
        """Send the outbox, then make the local list equal to the heads tagged DEFECTIVE on the server.

        Raises OMError (local state untouched) when the server is unusable, its catalog was never
        bootstrapped, or the outbox cannot be emptied: pulling before local changes arrived would
        undo them. A head changed locally while the server was read, or with a change still in the
        outbox (then or now), keeps its local state."""
        client = self.client()
        try:
            catalog = self.catalog()
            delivery = self.outbox.deliver(self.identity, self._send(client, catalog), self._deadline(client))
            if delivery.error:  # same type as the failure (OMAuthError, OMUnavailable, ...), fuller message
                kind = type(delivery.failure) if delivery.failure else OMError
                raise kind(f"{len(delivery.delivered)} change(s) sent, {len(delivery.pending)} still waiting: "
                           f"{delivery.error}. The local quarantine was left as it is.") from delivery.failure
            with self.store.locked(self.identity):  # the state the server's answer is compared with
                base = {e.ref: e for e in self.store.list(self.identity)}
                held = self.outbox.pending_heads(self.identity)
            defects = client.defects(catalog)
        finally:
            client.close()
        entries = []
        for d in defects:
            ev = d.evidence
            entries.append(MaskEntry(
                d.layer, d.head, ev.get("level") if ev.get("level") in MASK_LEVELS else "projection",
                ev.get("reason") or "tagged SynapseQuarantine.DEFECTIVE in OpenMetadata", ev.get("experiment"),
                ev.get("effect"), ev.get("prompt"), ev.get("target"), ev.get("at") or now_iso(),
                ev.get("by") or "openmetadata", "openmetadata"))
        change = self.store.replace(self.identity, entries, by=self.user, base=base,
                                    keep=lambda: held | self.outbox.pending_heads(self.identity))
        parts = [f"added {_heads(change.added)}" if change.added else "",
                 f"removed {_heads(change.removed)}" if change.removed else ""]
        summary = "; ".join(p for p in parts if p) or "already equal"
        return SyncReport(change.added, change.removed, len(delivery.delivered), self.config.server,
                          f"Synced with OpenMetadata at {self.config.server}: {len(delivery.delivered)} change(s) "
                          f"sent; local quarantine {summary}.")

    def export_thought_path(self, path) -> int:
        """Send a traced thought path as column-level lineage ((layer, head) pairs or ThoughtPath.heads)."""
        catalog = self.catalog()
        edges = thought_path_edges(catalog, path)
        client = self.client()
        try:
            return client.add_lineage(catalog, edges)
        finally:
            client.close()

    def subscribe(self, endpoint: str, secret: str | None = None) -> str:
        """Create the server's event subscription that posts tag changes to `endpoint` (the webhook)."""
        secret = secret or (self.config.webhook_secret if self.config else None)
        if not secret:
            raise OMError("the subscription needs the webhook's shared secret: set SYNAPSE_OM_WEBHOOK_SECRET")
        client = self.client()
        try:
            return client.subscribe(self.catalog(), endpoint, secret)
        finally:
            client.close()

    def poll(self) -> PollReport:
        """Read the server's change-event feed since the last poll and apply tag changes locally.

        A head changed locally while the feed was read, or with a change in the outbox (then or
        now), keeps its local state: the feed's events about it are older than that change. An
        event the feed holds malformed is skipped (and logged), so it never blocks the cursor."""
        ident = self.identity
        cursor_path = self.store.path / f"{ident.fingerprint}.events.json"
        since = int(read_json(cursor_path, {}).get("since") or time.time() * 1000 - FIRST_POLL_LOOKBACK_MS)
        with self.store.locked(ident):
            base = {e.ref: e for e in self.store.list(ident)}
            held = self.outbox.pending_heads(ident)
        client = self.client()
        try:
            events = client.events(since)
        finally:
            client.close()
        layers = table_layers(ident)
        changes, stamps = [], []
        for event in events:
            try:
                stamps.append(event_time(event))
                changes.extend(tag_changes(event, layers, ident.n_heads))
            except BadInput as exc:
                log.warning("poll: skipped a malformed event from %s: %s", self.config.server, exc)
        with self.store.locked(ident):
            now = {e.ref: e for e in self.store.list(ident)}
            moved = {ref for ref in set(base) | set(now) if base.get(ref) != now.get(ref)}
            skip = {(r.layer, r.head) for r in held | moved | self.outbox.pending_heads(ident)}
            result = apply_changes(self.store, ident, changes, skip)
        since = max([since, *(s + 1 for s in stamps)])
        atomic_write_json(cursor_path, {"since": since})
        return PollReport(len(events), len(changes), tuple(e.short for e in result.added),
                          tuple(e.short for e in result.removed), since)
