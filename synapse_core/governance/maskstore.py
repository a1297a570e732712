"""The quarantine list: heads switched off for every later run of one model, with the evidence.

One JSON file per model under $SYNAPSE_HOME/masks/, keyed by the weights fingerprint (so a
fine-tune with the same name never inherits another model's masks), beside an append-only audit
log (JSON lines) of every add, remove, clear and sync. One lock per model covers a change, its
audit record and its outbox entry, written together through a write-ahead intent (common/files.py):
a crash between the writes is completed by the next call, whatever it is. Trace, ablate, sweep and discover apply `MaskStore().masks(handle)` unless the
user asks for the raw model.

>>> store = MaskStore()
>>> store.add(handle, ["3.1"], reason="emits the unwanted token")
>>> store.masks(handle)
[HeadMask(layer=3, head=1, level='projection')]
"""
from __future__ import annotations

import getpass
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from ..arch.spec import MASK_LEVELS, HeadMask, HeadRef, parse_head
from ..common import settings
from ..common.errors import BadInput, StoreError
from ..common.files import commit, locked, read_json, read_lines, recover

_FORMAT = 1


@dataclass(frozen=True)
class ModelIdentity:
    """What the mask store and the catalog need to know about a model: no weights."""

    name: str  # human name, e.g. "SmolLM2-135M-Instruct"; the catalog's Database name
    fingerprint: str  # sha256 prefix of the weights; the store's key
    n_layers: int
    n_heads: int  # query heads per layer

    def check_head(self, layer: int, head: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise BadInput(f"layer {layer} does not exist: {self.name} has layers 0-{self.n_layers - 1}")
        if not 0 <= head < self.n_heads:
            raise BadInput(f"head {head} does not exist: layer {layer} has heads 0-{self.n_heads - 1}")


def identity_of(model) -> ModelIdentity:
    """A ModelIdentity from a ModelHandle (or anything with name, fingerprint and arch), or itself."""
    if isinstance(model, ModelIdentity):
        return model
    try:
        return ModelIdentity(model.name, model.fingerprint, model.arch.n_layers, model.arch.n_heads)
    except AttributeError as exc:
        raise BadInput(f"{type(model).__name__} is not a model: give a ModelHandle or a ModelIdentity") from exc


def current_user() -> str:
    """The OS user, the default author of CLI changes."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name in some containers
        return "unknown"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class MaskEntry:
    """One quarantined head and why."""

    layer: int
    head: int
    level: str  # projection | attention | both (see spec.HeadMask)
    reason: str  # why, in the user's words
    experiment: str | None = None  # hash of the stored experiment that justified it (evidence)
    effect: str | None = None  # verified effect, e.g. "p(' Paris') 0.81 -> 0.02"
    prompt: str | None = None  # the evidence prompt, re-run by "verify"
    target: str | None = None  # the unwanted token the evidence prompt produced, e.g. " Paris"
    at: str = ""  # ISO time (UTC) of the quarantine
    by: str = ""  # who: the browser session's name, the OS user, or the OpenMetadata user
    source: str = "local"  # local | openmetadata (pulled by sync or a change event)
    cost: str | None = None  # the cost report kept as evidence: "report <hash>: <verdict>" (experiments.costs)

    @property
    def mask(self) -> HeadMask:
        return HeadMask(self.layer, self.head, self.level)

    @property
    def ref(self) -> HeadRef:
        return HeadRef(self.layer, self.head)

    @property
    def short(self) -> str:
        return f"{self.layer}.{self.head}"

    @classmethod
    def from_json(cls, data) -> MaskEntry:
        """An entry from its JSON object; TypeError/ValueError naming what is wrong with it."""
        if not isinstance(data, dict):
            raise TypeError(f"entry {json.dumps(data)[:60]} is not an object")
        known = {f.name for f in fields(cls)}
        entry = cls(**{k: v for k, v in data.items() if k in known})
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (entry.layer, entry.head)):
            raise TypeError(f"entry {json.dumps(data)[:60]} has no integer layer and head")
        if entry.level not in MASK_LEVELS or not isinstance(entry.reason, str):
            raise ValueError(f"entry {entry.layer}.{entry.head} has level {entry.level!r} or no reason")
        return entry


@dataclass(frozen=True)
class AuditRecord:
    """One line of the audit log."""

    at: str  # ISO time (UTC)
    by: str
    action: str  # add | remove | clear | sync
    heads: tuple[str, ...]  # "L.H" of every head the action changed
    reason: str | None = None
    experiment: str | None = None
    source: str = "local"  # local | openmetadata
    detail: str | None = None  # e.g. "added 3.1; removed 5.2" for a sync
    id: str | None = None  # unique, so a crash recovery never writes a record twice


@dataclass(frozen=True)
class StoreChange:
    """What one call changed."""

    added: tuple[MaskEntry, ...] = ()  # new or re-levelled entries
    removed: tuple[MaskEntry, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def _to_ref(head) -> HeadRef:
    if isinstance(head, str):
        return parse_head(head)
    if isinstance(head, (HeadRef, HeadMask, MaskEntry)):
        return HeadRef(head.layer, head.head)
    if isinstance(head, tuple) and len(head) == 2:
        return HeadRef(int(head[0]), int(head[1]))
    raise BadInput(f"{head!r} is not a head: give 'L.H', a HeadRef or a (layer, head) pair")


def _evidence(entry: MaskEntry) -> tuple:
    return entry.level, entry.reason, entry.experiment, entry.effect, entry.prompt, entry.target, entry.cost


_FINGERPRINT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class MaskStore:
    """Quarantine lists on disk, one per model fingerprint. Thread- and process-safe."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else settings.subdir("masks")

    # ---- files -------------------------------------------------------------------------------

    def _files(self, ident: ModelIdentity) -> tuple[Path, Path, Path]:
        if not _FINGERPRINT_RE.match(ident.fingerprint or ""):
            raise BadInput(f"fingerprint {ident.fingerprint!r} cannot name a file: use hex digits")
        base = self.path / ident.fingerprint
        return base.with_suffix(".json"), base.with_suffix(".audit.jsonl"), base.with_suffix(".lock")

    def file(self, model, suffix: str) -> Path:
        """A file of this model beside its list, e.g. file(model, ".outbox.json")."""
        ident = identity_of(model)
        self._files(ident)  # checks the fingerprint can name a file
        return self.path / f"{ident.fingerprint}{suffix}"

    def lock_path(self, model) -> Path:
        return self._files(identity_of(model))[2]

    def _intent(self, ident: ModelIdentity) -> Path:
        return self.path / f"{ident.fingerprint}.intent"

    @contextmanager
    def locked(self, model) -> Iterator[None]:
        """Hold the model's one lock (re-entrant), having first completed a change a crash left half done."""
        ident = identity_of(model)
        with locked(self.lock_path(ident)):
            recover(self._intent(ident))
            yield

    def settle(self, model) -> None:
        """Complete a half-done change before a read (cheap when there is none)."""
        ident = identity_of(model)
        if self._intent(ident).exists():
            with self.locked(ident):
                pass

    def _read(self, ident: ModelIdentity, list_path: Path) -> list[MaskEntry]:
        data = read_json(list_path, {"entries": []})
        try:
            entries = [MaskEntry.from_json(e) for e in data["entries"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{list_path} is not a Synapse quarantine list ({exc}); fix or remove it") from None
        return sorted(entries, key=lambda e: (e.layer, e.head))

    def _text(self, ident: ModelIdentity, entries) -> str:
        return json.dumps({
            "format": _FORMAT,
            "model": ident.name,
            "fingerprint": ident.fingerprint,
            "n_layers": ident.n_layers,
            "n_heads": ident.n_heads,
            "entries": [asdict(e) for e in sorted(entries, key=lambda e: (e.layer, e.head))],
        }, indent=1, sort_keys=True) + "\n"

    def _change(self, model, action: str, by: str | None, source: str, edit, reason=None, experiment=None,
                detail_fn=None, also: Callable[[tuple, tuple], Mapping[Path, str]] | None = None) -> StoreChange:
        """Read and edit the list under the model's lock, then write it, its audit record and the
        files `also(added, removed)` returns (the outbox) as one change."""
        ident = identity_of(model)
        list_path, audit_path, _ = self._files(ident)
        with self.locked(ident):
            before = {e.ref: e for e in self._read(ident, list_path)}
            after = edit(dict(before))
            added = tuple(e for ref, e in sorted(after.items()) if before.get(ref) != e)
            removed = tuple(e for ref, e in sorted(before.items()) if ref not in after)
            if not (added or removed):
                return StoreChange()
            writes = dict(also(added, removed)) if also else {}  # read before anything is written
            heads = tuple(e.short for e in added + removed)
            record = asdict(AuditRecord(
                at=now_iso(), by=by or current_user(), action=action, heads=heads, reason=reason,
                experiment=experiment, source=source,
                detail=detail_fn(added, removed) if detail_fn else None, id=uuid.uuid4().hex,
            ))
            commit(self._intent(ident), {list_path: self._text(ident, after.values()), **writes},
                   {audit_path: [record]})
            return StoreChange(added, removed)

    # ---- reading -----------------------------------------------------------------------------

    def list(self, model) -> list[MaskEntry]:
        """The model's quarantined heads, ordered by layer and head."""
        ident = identity_of(model)
        self.settle(ident)
        return self._read(ident, self._files(ident)[0])

    def masks(self, model) -> list[HeadMask]:
        """The masks in force for this model: what every run applies unless asked not to."""
        ident = identity_of(model)
        out = []
        for entry in self.list(ident):
            ident.check_head(entry.layer, entry.head)  # a list copied from another model fails loudly
            out.append(entry.mask)
        return out

    def audit(self, model, limit: int | None = None) -> list[AuditRecord]:
        """The audit log, oldest first; the last `limit` records when given. StoreError names damaged lines."""
        ident = identity_of(model)
        self.settle(ident)
        records = read_lines(self._files(ident)[1])
        known = {f.name for f in fields(AuditRecord)}
        out = [AuditRecord(**{**{k: v for k, v in r.items() if k in known}, "heads": tuple(r.get("heads", ()))})
               for r in records]
        return out[-limit:] if limit else out

    # ---- changing ----------------------------------------------------------------------------

    def add(self, model, heads: Iterable, *, reason: str, level: str = "projection", experiment: str | None = None,
            effect: str | None = None, prompt: str | None = None, target: str | None = None,
            by: str | None = None, source: str = "local", keep_existing: bool = False, also=None,
            cost: str | None = None) -> StoreChange:
        """Quarantine heads ("L.H", HeadRef, HeadMask or (layer, head)) at `level`.

        A head already quarantined is re-recorded with the new evidence, unless keep_existing
        (used for changes arriving from OpenMetadata, which carry less evidence than the local entry).
        """
        ident = identity_of(model)
        if not reason or not reason.strip():
            raise BadInput("a quarantine needs a reason: say why the head is harmful (--reason TEXT)")
        if level not in MASK_LEVELS:
            raise BadInput(f"mask level {level!r} is not one of {', '.join(MASK_LEVELS)}")
        refs = sorted({_to_ref(h) for h in heads})
        if not refs:
            raise BadInput("no heads given: name at least one head as LAYER.HEAD, e.g. 3.1")
        for ref in refs:
            ident.check_head(ref.layer, ref.head)
        by = by or current_user()
        at = now_iso()

        def edit(current: dict) -> dict:
            for ref in refs:
                old = current.get(ref)
                new = MaskEntry(ref.layer, ref.head, level, reason.strip(), experiment, effect, prompt, target,
                                at, by, source, cost)
                if old is not None and (keep_existing or _evidence(old) == _evidence(new)):
                    continue
                current[ref] = new
            return current

        return self._change(ident, "add", by, source, edit, reason=reason.strip(), experiment=experiment, also=also,
                            detail_fn=(lambda added, removed: f"cost {cost}") if cost else None)

    def remove(self, model, heads: Iterable, *, by: str | None = None, source: str = "local",
               missing_ok: bool = False, also=None) -> StoreChange:
        """Release heads from quarantine. A head that is not quarantined is an error unless missing_ok."""
        ident = identity_of(model)
        refs = sorted({_to_ref(h) for h in heads})
        if not refs:
            raise BadInput("no heads given: name at least one head as LAYER.HEAD, e.g. 3.1")
        for ref in refs:
            ident.check_head(ref.layer, ref.head)

        def edit(current: dict) -> dict:
            missing = [r.short for r in refs if r not in current]
            if missing and not missing_ok:
                held = ", ".join(e.short for _, e in sorted(current.items())) or "none"
                raise BadInput(f"head {missing[0]} is not quarantined for {ident.name} (quarantined: {held})")
            for ref in refs:
                current.pop(ref, None)
            return current

        return self._change(ident, "remove", by, source, edit, also=also)

    def clear(self, model, *, by: str | None = None, source: str = "local", also=None) -> StoreChange:
        """Release every head of this model. also(added, removed): more files written with the change."""
        return self._change(model, "clear", by, source, lambda current: {}, also=also)

    def replace(self, model, entries: Iterable[MaskEntry], *, by: str | None = None, source: str = "openmetadata",
                base: Mapping[HeadRef, MaskEntry] | None = None,
                keep: Callable[[], Iterable[HeadRef]] | None = None) -> StoreChange:
        """Make the list equal to `entries` by head (a sync): heads in both keep their local entry.

        base: the local list when the server was read; a head whose local entry changed since then
        is a newer local change and stays as it is. keep(): heads to leave alone (a change still
        waiting in the outbox), asked under the lock."""
        ident = identity_of(model)
        wanted = {}
        for entry in entries:
            ident.check_head(entry.layer, entry.head)
            wanted[entry.ref] = entry

        def edit(current: dict) -> dict:
            held = set(keep() if keep else ())
            if base is not None:
                held |= {ref for ref in set(base) | set(current) if base.get(ref) != current.get(ref)}
            out = {ref: current.get(ref, entry) for ref, entry in wanted.items() if ref not in held}
            out.update({ref: current[ref] for ref in held if ref in current})
            return out

        def detail(added, removed) -> str:
            return (f"added {', '.join(e.short for e in added) or 'none'}; "
                    f"removed {', '.join(e.short for e in removed) or 'none'}")

        return self._change(ident, "sync", by, source, edit, detail_fn=detail)
