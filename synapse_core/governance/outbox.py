"""Quarantine changes waiting to reach OpenMetadata: one file per model beside its mask list.

A local change always takes effect at once; its server-side counterpart is queued here and sent
when a server answers (right away, or on the next sync). Rules:
- the latest intent per head wins (add then remove queues one remove), so nothing is sent that
  would be undone by the next item;
- items are sent in order and each is deleted from the file as soon as the server confirmed it,
  under a lock held for the whole delivery, so two syncs never send the same item;
- sending stops at the first failure, which is recorded on the item (attempts, last_error);
- the operations are idempotent (tags are read before they are added), so a crash between the
  server's confirmation and the deletion re-sends an item without doubling its effect.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..common.errors import StoreError
from ..common.files import atomic_write_json, locked, read_json
from .maskstore import MaskEntry, MaskStore, ModelIdentity, identity_of, now_iso
from .omconfig import OMError


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
        self.path = (store or MaskStore()).path

    def _files(self, ident: ModelIdentity) -> tuple[Path, Path]:
        base = self.path / ident.fingerprint
        return base.with_suffix(".outbox.json"), base.with_suffix(".outbox.lock")

    def _read(self, path: Path) -> list[OutboxItem]:
        data = read_json(path, {"items": []})
        try:
            return [OutboxItem(**{**{k: v for k, v in item.items() if k in _ITEM_FIELDS},
                                  "entry": MaskEntry.from_json(item["entry"])}) for item in data["items"]]
        except (KeyError, TypeError) as exc:
            raise StoreError(f"{path} is not a Synapse outbox ({exc})") from exc

    @staticmethod
    def _write(path: Path, items: list[OutboxItem]) -> None:
        atomic_write_json(path, {"format": 1, "items": [asdict(i) for i in items]})

    def pending(self, model) -> list[OutboxItem]:
        return self._read(self._files(identity_of(model))[0])

    def enqueue(self, model, op: str, entries) -> list[OutboxItem]:
        """Queue `op` for each entry (MaskEntry); a pending item for the same head is replaced."""
        if op not in ("add", "remove"):
            raise ValueError(f"outbox operation {op!r} is not add or remove")
        path, lock = self._files(identity_of(model))
        new = [OutboxItem(uuid.uuid4().hex, op, e, now_iso()) for e in entries]
        with locked(lock):
            heads = {(i.entry.layer, i.entry.head) for i in new}
            items = [i for i in self._read(path) if (i.entry.layer, i.entry.head) not in heads] + new
            self._write(path, items)
        return new

    def deliver(self, model, send: Callable[[OutboxItem], object]) -> Delivery:
        """Send every pending item in order with `send(item)`; stop at the first OMError."""
        path, lock = self._files(identity_of(model))
        delivered = []
        with locked(lock):
            items = self._read(path)
            while items:
                item = items[0]
                try:
                    send(item)
                except OMError as exc:
                    items[0] = replace(item, attempts=item.attempts + 1, last_error=str(exc))
                    self._write(path, items)
                    return Delivery(tuple(delivered), tuple(items), str(exc), exc)
                items = items[1:]
                self._write(path, items)  # confirmed: gone before anything else is tried
                delivered.append(item)
        return Delivery(tuple(delivered), ())


_ITEM_FIELDS = {f.name for f in fields(OutboxItem)}
