"""The Governance side's tables and messages: the quarantine with its evidence, the audit log, the
embedded catalog, what a change or a sync reports, and the last discovery's top head as a
quarantine's evidence. Pages call these; ui/core.py keeps the session keys and caches."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pandas as pd
import streamlit as st

from .core import experiment_url

# who and when before the long text columns, so they stay in view on a 1400 px window
MASK_COLUMNS = ["head", "level", "by", "at", "reason", "experiment", "effect", "cost", "prompt", "target", "source"]


def mask_table(entries, links: bool = True) -> pd.DataFrame:
    """The quarantine with its evidence; `experiment` a link when its page exists (and links)."""
    rows = [{**{c: getattr(e, c) for c in MASK_COLUMNS if c != "head"}, "head": e.short,
             "experiment": (experiment_url(e.experiment) if links else None) or e.experiment} for e in entries]
    return pd.DataFrame(rows, columns=MASK_COLUMNS)


def experiment_column():
    """Column config of mask_table's `experiment`: a link showing the hash, or the hash."""
    if experiment_url("0" * 16):
        return st.column_config.LinkColumn("experiment", display_text=r"experiment=(\w+)")
    return st.column_config.TextColumn("experiment")


def audit_table(records) -> pd.DataFrame:
    """The audit log, newest first."""
    return pd.DataFrame([{**asdict(r), "heads": ", ".join(r.heads)} for r in reversed(records)],
                        columns=["at", "by", "action", "heads", "reason", "experiment", "source", "detail"])


def records_json(records) -> str:
    return json.dumps([asdict(r) for r in records], indent=2)


def catalog_table(rows) -> pd.DataFrame:
    """The embedded catalog: one row per column of every table, DEFECTIVE tags shown."""
    return pd.DataFrame([{"table": r.table, "column": r.column, "type": r.data_type, "tags": ", ".join(r.tags),
                          "level": r.level, "reason": r.reason, "description": r.description} for r in rows])


def report_message(report) -> tuple[str, str]:
    """(st function name, message) for a ChangeReport, a SyncReport or a BootstrapReport (which has
    no message of its own; its class lives in the SDK-importing module, hence no isinstance)."""
    if hasattr(report, "edges"):
        text = (f"Catalog bootstrapped: {len(report.created)} created, {len(report.updated)} updated, "
                f"{report.unchanged} unchanged, {report.edges} lineage edge(s); {report.delivered} outbox "
                "change(s) sent.")
        if report.error:
            text += f" {report.pending} change(s) still wait in the outbox: {report.error}."
    else:
        text = report.message
    return ("warning" if getattr(report, "error", None) else "success"), text


@dataclass(frozen=True)
class DiscoveredHead:
    """The top head of the last discovery, with the evidence a quarantine records."""

    head: str  # "L.H"
    effect: str  # e.g. "logit_diff -2.310 when ablated"
    prompt: str | None
    target: str | None
    experiment: str | None  # the discovery's stored hash, when it has one


def top_discovered(found) -> DiscoveredHead | None:
    """The first of `found.heads` (ordered by verified effect); `found` may wrap its result (.result, .key)."""
    result = getattr(found, "result", found)
    heads = getattr(result, "heads", None) or ()
    if not heads:
        return None
    top = heads[0]
    case = (getattr(result, "cases", None) or (None,))[0]
    effect = getattr(top, "verified_effect", None)
    metric = getattr(result, "metric", "metric")
    return DiscoveredHead(
        f"{top.layer}.{top.head}",
        f"{metric} {effect:+.3f} when ablated" if effect is not None else "top head of the discovery",
        getattr(case, "prompt", None), getattr(case, "target", None), getattr(found, "key", None))
