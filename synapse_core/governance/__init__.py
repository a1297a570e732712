"""Quarantine as catalog data: the mask store and audit log, the outbox, the catalog (layer = table,
head = column), the OpenMetadata client and its configuration, change events and the webhook.
May import: common, arch, hooks, model, features, interventions, analysis, experiments."""
