"""Quarantined SAE features: switched off (zero-ablated at their SAE's site, the error term kept) in every
later run of one model, with the evidence, beside the quarantined heads.

The list is one JSON file per model (`<fingerprint>.features.json`) under the mask store's folder, changed
under the store's lock with a record in the same audit log (`heads` holds the feature names), through
the same write-ahead intent, so a crash between the writes is completed by the next change.
`in_force(model)` is what every run applies: the quarantined heads, then the features.

>>> q = FeatureQuarantine()
>>> q.add(handle, ["layers.15.resid.post.sae.1234"], reason="fires on the unwanted city")  # doctest: +SKIP
>>> q.masks(handle)  # doctest: +SKIP
[FeatureMask(layer=15, feature='layers.15.resid.post.sae.1234')]
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

from ..arch.spec import FeatureMask, HeadMask
from ..common.errors import BadInput, StoreError
from ..common.files import commit, read_json
from ..interventions.featureops import feature_mask
from .maskstore import AuditRecord, MaskStore, current_user, identity_of, now_iso

_FORMAT = 1


@dataclass(frozen=True)
class FeatureEntry:
    """One quarantined feature and why (the evidence fields as a head's MaskEntry has them)."""

    feature: str  # layers.15.resid.post.sae.1234
    layer: int  # the layer whose site its SAE reads
    reason: str
    experiment: str | None = None
    effect: str | None = None
    prompt: str | None = None
    target: str | None = None
    at: str = ""
    by: str = ""
    source: str = "local"
    cost: str | None = None

    level = "feature"  # where a head's entry says projection | attention | both

    @property
    def short(self) -> str:
        return self.feature

    @property
    def mask(self) -> FeatureMask:
        return FeatureMask(self.layer, self.feature)


class FeatureQuarantine:
    """Quarantined features on disk, one list per model fingerprint, sharing the mask store's lock and audit."""

    def __init__(self, store: MaskStore | None = None):
        self.store = store or MaskStore()

    def _path(self, ident):
        return self.store.file(ident, ".features.json")

    def list(self, model) -> list[FeatureEntry]:
        """The model's quarantined features, by name."""
        ident = identity_of(model)
        self.store.settle(ident)
        path = self._path(ident)
        data = read_json(path, {"entries": []})
        known = {f.name for f in fields(FeatureEntry)}
        try:
            entries = [FeatureEntry(**{k: v for k, v in e.items() if k in known}) for e in data["entries"]]
        except (KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{path} is not a Synapse feature quarantine list ({exc}); fix or remove it") from None
        return sorted(entries, key=lambda e: (e.layer, e.feature))

    def masks(self, model) -> list[FeatureMask]:
        ident = identity_of(model)
        out = []
        for e in self.list(ident):
            if not 0 <= e.layer < ident.n_layers:  # a list copied from another model fails loudly
                raise BadInput(f"feature {e.feature} sits at layer {e.layer}: {ident.name} has layers "
                               f"0-{ident.n_layers - 1}")
            out.append(e.mask)
        return out

    def _change(self, model, action: str, by: str | None, edit, reason: str | None = None,
                experiment: str | None = None) -> tuple[tuple[FeatureEntry, ...], tuple[FeatureEntry, ...]]:
        ident = identity_of(model)
        path = self._path(ident)
        with self.store.locked(ident):
            before = {e.feature: e for e in self.list(ident)}
            after = edit(dict(before))
            added = tuple(e for name, e in sorted(after.items()) if before.get(name) != e)
            removed = tuple(e for name, e in sorted(before.items()) if name not in after)
            if added or removed:
                record = asdict(AuditRecord(at=now_iso(), by=by or current_user(), action=action,
                                            heads=tuple(e.feature for e in added + removed), reason=reason,
                                            experiment=experiment, id=uuid.uuid4().hex))
                text = json.dumps({"format": _FORMAT, "model": ident.name, "fingerprint": ident.fingerprint,
                                   "entries": [asdict(e) for e in sorted(after.values(), key=lambda e: e.feature)]},
                                  indent=1, sort_keys=True) + "\n"
                commit(self.store.file(ident, ".intent"), {path: text},
                       {self.store.file(ident, ".audit.jsonl"): [record]})
            return added, removed

    def add(self, model, names: Iterable[str], *, reason: str, by: str | None = None, experiment: str | None = None,
            effect: str | None = None, prompt: str | None = None, target: str | None = None,
            cost: str | None = None) -> tuple[FeatureEntry, ...]:
        """Quarantine features by name; BadInput names a feature that does not exist. Returns those added."""
        ident = identity_of(model)
        if not reason or not reason.strip():
            raise BadInput("a quarantine needs a reason: say why the feature is harmful (--reason TEXT)")
        masks = sorted({feature_mask(n) for n in names})
        if not masks:
            raise BadInput("no features given: name at least one, e.g. layers.15.resid.post.sae.1234")
        for m in masks:
            if not 0 <= m.layer < ident.n_layers:
                raise BadInput(f"feature {m.feature} sits at layer {m.layer}: {ident.name} has layers "
                               f"0-{ident.n_layers - 1}")
        by, at = by or current_user(), now_iso()

        def edit(current: dict) -> dict:
            for m in masks:
                current[m.feature] = FeatureEntry(m.feature, m.layer, reason.strip(), experiment, effect, prompt,
                                                  target, at, by, "local", cost)
            return current

        return self._change(ident, "add", by, edit, reason.strip(), experiment)[0]

    def remove(self, model, names: Iterable[str], *, by: str | None = None) -> tuple[FeatureEntry, ...]:
        """Lift the quarantine of features; BadInput names one that is not quarantined. Returns those removed."""
        wanted = sorted({n.strip() for n in names})
        if not wanted:
            raise BadInput("no features given: name at least one, e.g. layers.15.resid.post.sae.1234")

        def edit(current: dict) -> dict:
            missing = [n for n in wanted if n not in current]
            if missing:
                held = ", ".join(sorted(current)) or "none"
                raise BadInput(f"feature {missing[0]} is not quarantined for {identity_of(model).name} "
                               f"(quarantined: {held})")
            return {n: e for n, e in current.items() if n not in wanted}

        return self._change(model, "remove", by, edit)[1]


def in_force(model, store: MaskStore | None = None) -> list[HeadMask | FeatureMask]:
    """What every run of this model applies: its quarantined heads, then its quarantined features."""
    store = store or MaskStore()
    return [*store.masks(model), *FeatureQuarantine(store).masks(model)]
