"""Quarantine and release SAE features through a Governance: the local list (featurestore), the audit
log, and with OpenMetadata configured, a DEFECTIVE column per quarantined feature under its layer's table
(catalog.py says why a column and not a tag).

The server is brought up to date by re-putting the catalog (bootstrap: idempotent, and it drops the
column of a released feature). Feature changes have no outbox yet: when the server cannot be reached
the change is in force locally, the report says so, and the next bootstrap sends it.
"""
from __future__ import annotations

from ..common.errors import SynapseError
from .featurestore import FeatureEntry, FeatureQuarantine
from .service import ChangeReport, Governance


def quarantine_features(gov: Governance, names, reason: str, experiment: str | None = None,
                        effect: str | None = None, prompt: str | None = None, target: str | None = None,
                        cost: str | None = None) -> ChangeReport:
    """Quarantine features by name (layers.15.resid.post.sae.1234) with their evidence; BadInput names a
    feature that does not exist."""
    added = FeatureQuarantine(gov.store).add(gov.identity, names, reason=reason, by=gov.user, experiment=experiment,
                                             effect=effect, prompt=prompt, target=target, cost=cost)
    return _report(gov, "quarantine", "Quarantined", added)


def release_features(gov: Governance, names) -> ChangeReport:
    """Lift the quarantine of features: every later run uses them again."""
    return _report(gov, "release", "Released", FeatureQuarantine(gov.store).remove(gov.identity, names, by=gov.user))


def _report(gov: Governance, action: str, verb: str, entries: tuple[FeatureEntry, ...]) -> ChangeReport:
    changed = tuple(e.feature for e in entries)
    message = f"{verb} {', '.join(changed)}." if changed else f"Nothing to change: {action} left the list as it was."
    error, delivered = None, 0
    if gov.config and changed:
        try:
            gov.bootstrap()
            delivered = len(changed)
            message += f" OpenMetadata at {gov.config.server} is up to date."
        except SynapseError as exc:  # the change is made locally: report, never fail half-done
            error = str(exc)
            message += (f" It is in force locally now, but not yet in OpenMetadata: {error}. The next "
                        "bootstrap sends it.")
    return ChangeReport(action, changed, gov.mode, delivered, 0, error, message)
