"""CLI commands of governance: `quarantine ...`, `om ...` and `webhook`, gathered by cli.main.

    python -m synapse_core quarantine add 3.1 5.2 --reason "emits ' Paris'" --experiment a1b2c3d4e5f60718
    python -m synapse_core quarantine list --json
    python -m synapse_core om bootstrap | sync | status --json | subscribe --endpoint URL | poll
    python -m synapse_core webhook --port 8766

The model is loaded only for its identity (name, fingerprint, layers x heads).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, replace

from ..common.errors import BadInput
from . import common as cli
from . import cost as cost_cli


def _governance(args):
    from ..governance.service import Governance

    return Governance(cli.load(args), user=getattr(args, "by", None))


def _report_json(gov, report) -> dict:
    return {"model": gov.identity.name, **asdict(report)}


# ---- quarantine ------------------------------------------------------------------------------


def _quarantine_args(p):
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="quarantine heads or SAE features: every later run masks them")
    add.add_argument("heads", nargs="+", metavar="L.H|FEATURE", help="heads, and features such as "
                     "layers.15.resid.post.sae.1234 (zero-ablated at their SAE's site, error term kept)")
    add.add_argument("--reason", required=True, help="why the head is harmful")
    add.add_argument("--experiment", default=None, metavar="HASH", help="the experiment that proved it")
    add.add_argument("--level", default="projection", choices=("projection", "attention", "both"))
    add.add_argument("--effect", default=None, help="the verified effect, e.g. \"p(' Paris') 0.81 -> 0.02\"")
    add.add_argument("--prompt", default=None, help="the evidence prompt")
    add.add_argument("--target", default=None, help="the unwanted token the evidence prompt produced")
    remove = sub.add_parser("remove", help="release heads or features from quarantine")
    remove.add_argument("heads", nargs="+", metavar="L.H|FEATURE")
    sub.add_parser("list", help="the quarantined heads and features")
    sub.add_parser("clear", help="release every head of the model")
    audit = sub.add_parser("audit", help="the audit log of every change")
    audit.add_argument("--limit", type=int, default=None)
    cost_cli.add_parser(sub)
    for parser in sub.choices.values():
        cli.add_model_args(parser)
        parser.add_argument("--by", default=None, help="who makes the change (default: the OS user)")


def _quarantine(args):
    if args.action == "cost":
        return cost_cli.run(args)
    gov = _governance(args)
    if args.action in ("add", "remove") and (features := _features(args)):
        from ..governance.featuregov import quarantine_features, release_features

        report = (quarantine_features(gov, features, args.reason, args.experiment, args.effect, args.prompt,
                                      args.target) if args.action == "add" else release_features(gov, features))
        if args.heads:  # heads too: their change after the features', one report a line
            report = replace(report, message=report.message + " " + _heads_change(gov, args).message)
    elif args.action in ("add", "remove"):
        report = _heads_change(gov, args)
    elif args.action == "clear":
        report = gov.clear()
    elif args.action == "audit":
        records = gov.audit(args.limit)
        lines = [f"{r.at} {r.by} {r.action} {','.join(r.heads)} ({r.source})" + (f": {r.reason}" if r.reason else "")
                 + (f" [{r.detail}]" if r.detail else "") for r in records]
        return cli.emit(args, {"model": gov.identity.name, "audit": [asdict(r) for r in records]},
                        "\n".join(lines) or "no changes recorded")
    else:  # list
        from ..governance.featurestore import FeatureQuarantine

        entries, features = gov.masks(), FeatureQuarantine(gov.store).list(gov.identity)
        payload = {"model": gov.identity.name, "fingerprint": gov.identity.fingerprint, "masked_heads": [
            {"layer": e.layer, "head": e.head, "reason": e.reason, "experiment": e.experiment, "at": e.at,
             "level": e.level, "by": e.by} for e in entries], "masked_features": [
            {"feature": e.feature, "layer": e.layer, "reason": e.reason, "experiment": e.experiment, "at": e.at,
             "by": e.by} for e in features]}
        lines = [f"{e.short}  {e.level:<10} {e.at}  {e.by}: {e.reason}" + (f" [{e.experiment}]" if e.experiment else "")
                 for e in [*entries, *features]]
        return cli.emit(args, payload, "\n".join(lines) or f"no heads quarantined for {gov.identity.name}")
    cli.emit(args, _report_json(gov, report), report.message)


def _features(args) -> list[str]:
    """The feature names among args.heads, taken out of it (what is left are heads)."""
    from ..interventions.featureops import is_feature_name

    names = [n for arg in args.heads for n in arg.replace(",", " ").split()]
    features = [n for n in names if is_feature_name(n)]
    args.heads = [n for n in names if n not in features]
    return features


def _heads_change(gov, args):
    if args.action == "add":
        return gov.quarantine(args.heads, args.reason, args.level, args.experiment, args.effect, args.prompt,
                              args.target)
    return gov.release(args.heads)


# ---- om --------------------------------------------------------------------------------------


def _om_args(p):
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("bootstrap", help="create or update the model's catalog in OpenMetadata (idempotent)")
    sub.add_parser("sync", help="send pending changes, then make local masks equal to the server's DEFECTIVE tags")
    sub.add_parser("status", help="embedded or OpenMetadata, server version, pending changes")
    subscribe = sub.add_parser("subscribe", help="create the event subscription that posts to `webhook`")
    subscribe.add_argument("--endpoint", required=True, help="the URL OpenMetadata posts to (reaching `webhook`)")
    poll = sub.add_parser("poll", help="apply tag changes from the server's event feed (no inbound connection)")
    poll.add_argument("--follow", type=float, default=None, metavar="SECONDS", help="keep polling every SECONDS")
    for parser in sub.choices.values():
        cli.add_model_args(parser)
        parser.add_argument("--by", default=None, help="who makes the change (default: the OS user)")


def _om(args):
    gov = _governance(args)
    if args.action == "status":
        status = gov.status()
        return cli.emit(args, _report_json(gov, status), status.message)
    if args.action == "bootstrap":
        report = gov.bootstrap()
        return cli.emit(args, _report_json(gov, report),
                        f"bootstrap: {len(report.created)} created, {len(report.updated)} updated, "
                        f"{report.unchanged} unchanged, {report.edges} lineage edges")
    if args.action == "sync":
        report = gov.sync()
        payload = {"model": gov.identity.name, "added": [e.short for e in report.added],
                   "removed": [e.short for e in report.removed], "delivered": report.delivered,
                   "server": report.server, "message": report.message}
        return cli.emit(args, payload, report.message)
    if args.action == "subscribe":
        name = gov.subscribe(args.endpoint)
        return cli.emit(args, {"model": gov.identity.name, "subscription": name, "endpoint": args.endpoint},
                        f"subscription {name} posts tag changes to {args.endpoint}")
    while True:  # poll
        report = gov.poll()
        cli.emit(args, _report_json(gov, report),
                 f"{report.events} events, {report.changes} tag changes; quarantined "
                 f"{', '.join(report.added) or 'none'}, released {', '.join(report.removed) or 'none'}")
        if not args.follow:
            return None
        time.sleep(args.follow)


# ---- webhook ---------------------------------------------------------------------------------


def _webhook_args(p):
    cli.add_model_args(p)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")


def _webhook(args):
    from ..governance.changeevents import make_webhook_server
    from ..governance.maskstore import MaskStore, identity_of
    from ..governance.omconfig import SECRET_ENV
    from ..governance.outbox import Outbox

    secret = os.environ.get(SECRET_ENV)
    if not secret:
        raise BadInput(f"the webhook needs the subscription's shared secret: set {SECRET_ENV}")
    if not 0 < args.port < 65536:
        raise BadInput(f"port {args.port} is not a TCP port: use 1-65535")
    ident, store = identity_of(cli.load(args)), MaskStore()
    outbox = Outbox(store)
    server = make_webhook_server(ident, secret, store, args.host, args.port,
                                 skip_heads=lambda: {(i.entry.layer, i.entry.head) for i in outbox.pending(ident)})
    print(f"listening on http://{args.host}:{server.server_address[1]} for {ident.name}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


COMMANDS = [
    ("quarantine", "quarantine heads: add, remove, list, clear, audit", _quarantine_args, _quarantine),
    ("om", "OpenMetadata: bootstrap, sync, status, subscribe, poll", _om_args, _om),
    ("webhook", "receive OpenMetadata change events and apply tag changes", _webhook_args, _webhook),
]
