"""Quarantine changes waiting to reach OpenMetadata: one file per model beside its mask list.

A local change always takes effect at once; its server-side counterpart is queued here and sent
when a server answers (right away, or on the next sync). Rules:
- a change and its outbox entry are written together, under the model's one lock, through the
  mask store's write-ahead intent (`staged` gives the store the outbox's new content), so a crash
  never leaves a quarantine that is saved but never queued;
- the latest intent per head wins (add then remove queues one remove), so nothing is sent that
  would be undone by the next item;
- no lock is held while the server is asked: an item is read under the lock, sent without it,
  and deleted under it once the server confirmed it (by id: an item replaced meanwhile by a newer
  intent for the same head stays and goes next);
- a send that raced a newer intent for its head, which another delivery already sent, may have
  landed last on the server: the head's current local state is queued again, so the server
  always ends equal to the local list;
- sending stops at the first failure, which is recorded on the item (attempts, last_error), or
  when the command's deadline has passed;
- the operations are idempotent (tags are read before they are added), so a crash between the
  server's confirmation and the deletion re-sends an item without doubling its effect.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..common.errors import StoreError
from ..common.files import atomic_write_text, read_json
from .maskstore import MaskEntry, MaskStore, identity_of, now_iso
from .omconfig import OMError, OMUnavailable


@dataclass(frozen=True)
class OutboxItem:
    """One pending change of one head on the server."""

    id: str  # unique, so a delivery can delete exactly what it sent
    op: str  # "add" (tag DEFECTIVE with evidence) | "remove" (drop the tag)
    entry: MaskEntry  # the head and, for "add", its evidence
    queued_at: str  # ISO time
    attempts: int = 0  # failed deliveries so far
    last_error: str | None = None  # why the last delivery failed

    @property
    def head(self) -> str:
        return self.entry.short


@dataclass(frozen=True)
class Delivery:
    """What one delivery run did."""

    delivered: tuple[OutboxItem, ...]  # sent and confirmed, now gone from the outbox
    pending: tuple[OutboxItem, ...]  # still waiting (the first one failed, or never tried)
    error: str | None = None  # why sending stopped early
    failure: OMError | None = field(default=None, repr=False, compare=False)  # the exception itself


class Outbox:
    """Pending server changes per model; safe across threads and processes."""

    def __init__(self, store: MaskStore | None = None):
        self.store = store or MaskStore()
        self.path = self.store.path

    def _file(self, model) -> Path:
        return self.store.file(model, ".outbox.json")

    def _read(self, path: Path) -> list[OutboxItem]:
        data = read_json(path, {"items": []})
        try:
            items = []
            for item in data["items"]:
                if not isinstance(item, dict):
                    raise TypeError(f"item {json.dumps(item)[:60]} is not an object")
                items.append(OutboxItem(**{**{k: v for k, v in item.items() if k in _ITEM_FIELDS},
                                           "entry": MaskEntry.from_json(item["entry"])}))
                if items[-1].op not in ("add", "remove"):
                    raise ValueError(f"item {items[-1].id} has operation {items[-1].op!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{path} is not a Synapse outbox ({exc}); fix or remove it") from None
        return items

    @staticmethod
    def _text(items: list[OutboxItem]) -> str:
        return json.dumps({"format": 1, "items": [asdict(i) for i in items]}, indent=1, sort_keys=True) + "\n"

    def _write(self, path: Path, items: list[OutboxItem]) -> None:
        atomic_write_text(path, self._text(items))

    def pending(self, model) -> list[OutboxItem]:
        ident = identity_of(model)
        self.store.settle(ident)
        return self._read(self._file(ident))

    def pending_heads(self, model) -> set:
        return {i.entry.ref for i in self.pending(model)}

    def staged(self, model, op: str, entries) -> dict[Path, str]:
        """The outbox's new content with `op` queued for each entry (a pending item for the same head
        is replaced), for the mask store to write with its change. Call under the model's lock."""
        if op not in ("add", "remove"):
            raise ValueError(f"outbox operation {op!r} is not add or remove")
        path = self._file(model)
        new = [OutboxItem(uuid.uuid4().hex, op, e, now_iso()) for e in entries]
        heads = {i.entry.ref for i in new}
        items = [i for i in self._read(path) if i.entry.ref not in heads] + new
        return {path: self._text(items)}

    def enqueue(self, model, op: str, entries) -> list[OutboxItem]:
        """Queue `op` for each entry (MaskEntry) on its own; a pending item for the same head is replaced."""
        ident, entries = identity_of(model), list(entries)
        with self.store.locked(ident):
            (path, text), = self.staged(ident, op, entries).items()
            atomic_write_text(path, text)
            return self._read(path)[len(self._read(path)) - len(entries):]

    def deliver(self, model, send: Callable[[OutboxItem], object], deadline: float | None = None) -> Delivery:
        """Send every pending item in order with `send(item)`; stop at the first OMError, or once
        time.monotonic() passes `deadline`. No lock is held while `send` runs."""
        ident = identity_of(model)
        path = self._file(ident)
        delivered, tried = [], set()
        while True:
            with self.store.locked(ident):
                items = self._read(path)
            item = next((i for i in items if i.id not in tried), None)
            if item is None:
                return Delivery(tuple(delivered), tuple(items))
            if deadline is not None and time.monotonic() > deadline:
                exc = OMUnavailable("the command's time for OpenMetadata ran out before every change was sent")
                return Delivery(tuple(delivered), tuple(items), str(exc), exc)
            tried.add(item.id)
            try:
                send(item)
            except OMError as exc:
                with self.store.locked(ident):
                    items = [replace(i, attempts=i.attempts + 1, last_error=str(exc)) if i.id == item.id else i
                             for i in self._read(path)]
                    self._write(path, items)
                return Delivery(tuple(delivered), tuple(items), str(exc), exc)
            self._confirm(ident, path, item)
            delivered.append(item)

    def _confirm(self, ident, path: Path, item: OutboxItem) -> None:
        """Delete a sent item; if a newer intent for its head was sent meanwhile by someone else,
        ours may have landed last: queue the head's local state again."""
        with self.store.locked(ident):
            items = self._read(path)
            rest = [i for i in items if i.id != item.id]
            if len(rest) == len(items) and not any(i.entry.ref == item.entry.ref for i in items):
                local = {e.ref: e for e in self.store.list(ident)}.get(item.entry.ref)
                agrees = local == item.entry if item.op == "add" else local is None
                if not agrees:
                    op = "add" if local is not None else "remove"
                    rest.append(OutboxItem(uuid.uuid4().hex, op, local or item.entry, now_iso()))
            if rest != items:
                self._write(path, rest)


_ITEM_FIELDS = {f.name for f in fields(OutboxItem)}
