"""Governance through the real SDK against a stand-in OpenMetadata server (tests/omstub), the
webhook, the event feed, the CLI, and the masks' effect on a real model's logits.

The stand-in validates every body with the SDK's own models and keeps state like the server,
traps included. The model's name has a dot in it everywhere, so every FQN is quoted.
"""
import json
import logging
import sys
import threading
import urllib.error
import urllib.request
from argparse import Namespace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the omstub package

from omstub import OMStub  # noqa: E402
from synapse_core.analysis.verify import verify  # noqa: E402
from synapse_core.cli import main as cli  # noqa: E402
from synapse_core.cli.common import run_masks  # noqa: E402
from synapse_core.governance.catalog import TAG_FQN  # noqa: E402
from synapse_core.governance.changeevents import make_webhook_server, sign, table_layers, tag_changes  # noqa: E402
from synapse_core.governance.maskstore import MaskStore, ModelIdentity  # noqa: E402
from synapse_core.governance.omconfig import OMAuthError, OMConfig, OMError, OMRejected, OMVersionMismatch  # noqa: E402
from synapse_core.governance.omnames import column_fqn, split_fqn, table_fqn  # noqa: E402
from synapse_core.governance.openmetadata import OMClient  # noqa: E402
from synapse_core.governance.service import Governance  # noqa: E402
from synapse_core.hooks.dispatch import hooks  # noqa: E402
from synapse_core.hooks.masking import mask_fns  # noqa: E402

TOKEN = "eyJraWQiOiJzdHViIn0.c3ludGhldGljLWJvdA.sig-7f3a9c"  # must never show up in a log or a message
SECRET = "webhook-shared-secret"
MODEL = ModelIdentity("tiny.model-v1", "0123456789abcdef", n_layers=3, n_heads=4)
LAYER = {i: f'Synapse_Neural_Service."tiny.model-v1".Transformer_Graph.Layer_{i}' for i in range(3)}


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog):
    """Every test runs with DEBUG logging captured; none may log the token."""
    caplog.set_level(logging.DEBUG)
    yield
    assert TOKEN not in caplog.text


@pytest.fixture
def stub():
    with OMStub(token=TOKEN) as server:
        yield server
    assert server.errors == [], server.errors  # every body the SDK sent was valid for its own models


@pytest.fixture
def store(tmp_path):
    return MaskStore(tmp_path / "masks")


@pytest.fixture
def gov(stub, store):
    return Governance(MODEL, OMConfig(stub.url, TOKEN, SECRET), store=store, user="tester")


def _tags(stub, layer, head):
    return [t["tagFQN"] for t in stub.column(LAYER[layer], f"Head_{head}").get("tags", [])]


def test_bootstrap_twice_is_idempotent(gov, stub):
    first = gov.bootstrap()
    assert len(first.created) == 1 + 1 + 1 + 5 + 1 + 1 and first.updated == () and first.edges == 4
    assert set(stub.state.entities["tables"]) == {*LAYER.values(), *(LAYER[0].replace("Layer_0", t) for t in (
        "Prompt_Ingress", "Response_Egress"))}
    assert [c["dataType"] for c in stub.table(LAYER[1])["columns"]] == ["FLOAT"] * 4
    ids = {e["name"]: e["id"] for e in stub.state.entities["tables"].values()}
    chain = ["Prompt_Ingress", "Layer_0", "Layer_1", "Layer_2", "Response_Egress"]
    assert set(stub.state.lineage) == {(ids[a], ids[b]) for a, b in zip(chain, chain[1:])}
    assert stub.state.entities["tags"]["SynapseQuarantine.DEFECTIVE"]["description"]

    gov.quarantine(["1.2"], reason="bad head", experiment="e1")  # a re-run must keep the tag and evidence
    before, events = stub.state.snapshot(), len(stub.state.events)
    second = gov.bootstrap()
    assert (second.created, second.updated, second.unchanged) == ((), (), 10)
    assert stub.state.snapshot() == before and len(stub.state.events) == events
    assert _tags(stub, 1, 2) == [TAG_FQN]


def test_quarantine_reaches_the_server_and_a_fresh_store_gets_it_back(gov, stub, tmp_path):
    gov.bootstrap()
    report = gov.quarantine(["1.2"], reason="emits ' Paris'", level="both", experiment="a1b2c3d4e5f60718",
                            effect="p(' Paris') 0.81 -> 0.02", prompt="The Eiffel Tower is in", target=" Paris")
    assert (report.changed, report.delivered, report.pending, report.error) == (("1.2",), 1, 0, None)
    assert _tags(stub, 1, 2) == [TAG_FQN] and _tags(stub, 1, 1) == []
    description = stub.column(LAYER[1], "Head_2")["description"]
    assert "a1b2c3d4e5f60718" in description and "Attention head 1.2" in description

    fresh = Governance(MODEL, gov.config, store=MaskStore(tmp_path / "elsewhere"), user="bob")
    sync = fresh.sync()
    assert [e.short for e in sync.added] == ["1.2"] and sync.removed == ()
    entry = fresh.masks()[0]
    assert (entry.level, entry.reason, entry.experiment, entry.prompt, entry.target, entry.by, entry.source) == \
        ("both", "emits ' Paris'", "a1b2c3d4e5f60718", "The Eiffel Tower is in", " Paris", "tester", "openmetadata")
    assert fresh.audit()[-1].action == "sync" and fresh.audit()[-1].by == "bob"

    released = gov.release(["1.2"])
    assert released.delivered == 1 and _tags(stub, 1, 2) == []
    assert "Quarantined by Synapse" not in stub.column(LAYER[1], "Head_2")["description"]
    assert [e.short for e in fresh.sync().removed] == ["1.2"] and fresh.masks() == []


def test_a_tag_added_on_the_server_flows_back_on_sync(gov, stub):
    gov.bootstrap()
    stub.ui_set_tag(LAYER[2], "Head_0", TAG_FQN, present=True, user="alice")
    report = gov.sync()
    assert [e.short for e in report.added] == ["2.0"] and "added 2.0" in report.message
    assert [m.short for m in gov.masks()] == ["2.0"]
    stub.ui_set_tag(LAYER[2], "Head_0", TAG_FQN, present=False, user="alice")
    assert [e.short for e in gov.sync().removed] == ["2.0"] and gov.masks() == []


def test_server_down_then_up_delivers_the_outbox_exactly_once(gov, stub):
    gov.bootstrap()
    stub.stop()
    report = gov.quarantine(["0.3"], reason="found while offline")
    assert report.pending == 1 and report.delivered == 0 and "unreachable" in report.error
    assert "in force locally" in report.message and "next sync" in report.message
    assert [m.short for m in gov.masks()] == ["0.3"]  # the local quarantine took effect anyway
    with pytest.raises(OMError, match="unreachable"):
        gov.sync()
    assert [i.head for i in gov.pending()] == ["0.3"]

    stub.start()  # same port, same state
    assert _tags(stub, 0, 3) == []
    stub.fail("PATCH", "tables/", 503, "briefly unavailable")
    again = gov.bootstrap()  # a bootstrap also sends the outbox, and says when it could not
    assert (again.delivered, again.pending) == (0, 1) and "briefly unavailable" in again.error
    first = gov.sync()
    assert first.delivered == 1 and first.added == () and first.removed == ()
    assert _tags(stub, 0, 3) == [TAG_FQN] and gov.pending() == []
    assert gov.sync().delivered == 0
    assert stub.count("PATCH", "tables/", 200) == 1  # sent once, never again


def test_bad_token_is_a_clear_error_and_local_state_is_kept(stub, store):
    bad = Governance(MODEL, OMConfig(stub.url, "expired-token"), store=store, user="tester")
    report = bad.quarantine(["1.1"], reason="r")
    assert "rejected the token (HTTP 401)" in report.error and "SYNAPSE_OM_TOKEN" in report.error
    assert [m.short for m in bad.masks()] == ["1.1"] and report.pending == 1
    with pytest.raises(OMAuthError, match="rejected the token"):
        bad.sync()
    status = bad.status()  # the version endpoint answers anyone: the status asks one that needs the token
    assert not status.connected and status.server_version == "2.0.6" and "rejected the token" in status.error
    assert [m.short for m in bad.masks()] == ["1.1"] and "expired-token" not in report.message


def test_version_mismatch_names_both_versions(gov, stub):
    stub.version = "1.9.3"
    status = gov.status()
    assert not status.connected and "1.9.3" in status.error and "2.0.6.0" in status.error
    with pytest.raises(OMVersionMismatch, match=r"1\.9\.3.*2\.0\.6\.0"):
        gov.sync()


def test_a_tag_already_there_is_not_added_twice(gov, stub):
    from metadata.generated.schema.entity.data.table import Table
    from metadata.generated.schema.type.tagLabel import LabelType, State, TagLabel, TagSource
    from metadata.ingestion.models.table_metadata import ColumnTag

    gov.bootstrap()
    client = OMClient(gov.config)
    # the trap, as the server has it: the SDK's own column-tag patch, twice, duplicates the tag
    label = TagLabel(tagFQN=TAG_FQN, source=TagSource.Classification, labelType=LabelType.Manual,
                     state=State.Confirmed)
    for _ in range(2):
        table = client._om.get_by_name(Table, LAYER[0], fields=["columns", "tags"])
        client._om.patch_column_tags(table, [ColumnTag(column_fqn=f"{LAYER[0]}.Head_0", tag_label=label)])
    assert _tags(stub, 0, 0) == [TAG_FQN, TAG_FQN]

    gov.quarantine(["1.1"], reason="first")
    gov.quarantine(["1.1"], reason="second reason")  # new evidence: description updated, tag not re-added
    assert _tags(stub, 1, 1) == [TAG_FQN]
    assert "second reason" in stub.column(LAYER[1], "Head_1")["description"]
    patches = stub.count("PATCH", "tables/")
    assert client.set_defective(gov.catalog(), gov.masks()[0]) is False  # nothing to change: nothing sent
    assert stub.count("PATCH", "tables/") == patches


def test_add_lineage_error_dict_is_detected(gov, stub):
    stub.fail("PUT", "lineage", 500, "lineage store unavailable")
    with pytest.raises(OMRejected, match="refused the lineage Prompt_Ingress -> Layer_0.*lineage store unavailable"):
        gov.bootstrap()
    # the trap itself: the SDK answers a dict with "error" instead of raising
    from metadata.generated.schema.api.lineage.addLineage import AddLineageRequest
    from metadata.generated.schema.type.entityLineage import EntitiesEdge
    from metadata.generated.schema.type.entityReference import EntityReference

    stub.fail("PUT", "lineage", 500)
    ids = [stub.table(LAYER[i])["id"] for i in (0, 1)]
    edge = EntitiesEdge(fromEntity=EntityReference(id=ids[0], type="table"),
                        toEntity=EntityReference(id=ids[1], type="table"))
    assert "error" in OMClient(gov.config)._om.add_lineage(AddLineageRequest(edge=edge), return_lineage=False)


def test_a_failed_patch_is_detected_and_kept_in_the_outbox(gov, stub):
    from metadata.generated.schema.entity.data.table import Table

    gov.bootstrap()
    # the trap: by default the SDK logs a failed patch and answers None
    client = OMClient(gov.config)
    table = client._om.get_by_name(Table, LAYER[2], fields=["columns", "tags"])
    dest = table.model_copy(deep=True)
    dest.columns[3].description = "changed"
    stub.fail("PATCH", "tables/", 400, "rejected by a policy")
    assert client._om.patch(entity=Table, source=table, destination=dest) is None

    stub.fail("PATCH", "tables/", 400, "rejected by a policy")
    report = gov.quarantine(["2.3"], reason="r")
    assert "refused to quarantine head 2.3: HTTP 400: rejected by a policy" in report.error and report.pending == 1
    assert _tags(stub, 2, 3) == [] and [m.short for m in gov.masks()] == ["2.3"]
    assert gov.sync().delivered == 1 and _tags(stub, 2, 3) == [TAG_FQN]


def test_thought_path_export_merges_column_lineage(gov, stub):
    gov.bootstrap()
    assert gov.export_thought_path([(0, 1), (1, 2), (2, 3)]) == 4
    gov.export_thought_path([(0, 0), (1, 2), (2, 3)])
    gov.bootstrap()  # re-running the chain keeps the exported column lineage
    ids = {e["name"]: e["id"] for e in stub.state.entities["tables"].values()}
    cols = stub.state.lineage[(ids["Layer_0"], ids["Layer_1"])]["columnsLineage"]
    assert {(c["fromColumns"][0].rsplit(".", 1)[1], c["toColumn"].rsplit(".", 1)[1]) for c in cols} == \
        {("Head_1", "Head_2"), ("Head_0", "Head_2")}


def test_fqn_with_a_dot_in_the_model_name_round_trips(gov, stub):
    cat = gov.catalog()
    name = table_fqn(cat, "Layer_1")
    assert name == LAYER[1] and len(name.split(".")) == 5  # str.split would cut the model's name in two
    assert split_fqn(name) == ["Synapse_Neural_Service", "tiny.model-v1", "Transformer_Graph", "Layer_1"]
    assert split_fqn(column_fqn(cat, "Layer_1", "Head_2"))[-2:] == ["Layer_1", "Head_2"]
    gov.bootstrap()
    gov.quarantine(["1.2"], reason="r")  # found by name through the quoted FQN
    assert stub.column(name, "Head_2")["fullyQualifiedName"] == f"{name}.Head_2" and _tags(stub, 1, 2) == [TAG_FQN]


def test_token_stays_out_of_reprs_and_messages(gov, stub, caplog):
    client = OMClient(gov.config)
    assert TOKEN not in repr(client) and TOKEN not in repr(gov.config) and TOKEN not in repr(gov)
    gov.bootstrap()
    gov.quarantine(["0.0"], reason="r")
    stub.token = "rotated"  # the server now rejects ours: errors are logged and raised
    with pytest.raises(OMAuthError) as err:
        gov.sync()
    assert TOKEN not in str(err.value) and "rejected the token" in str(err.value)
    assert caplog.records  # the SDK did log at DEBUG; the autouse fixture checks none had the token


# ---- change events -------------------------------------------------------------------------


@pytest.fixture
def webhook(store):
    server = make_webhook_server(MODEL, SECRET, store, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _post(url, body: bytes, signature: str | None):
    headers = {"Content-Type": "application/json", **({"X-OM-Signature": signature} if signature else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_webhook_applies_signed_events_and_rejects_bad_signatures(gov, stub, store, webhook):
    gov.bootstrap()
    assert gov.subscribe(webhook).startswith("synapse-quarantine-tiny")
    stub.ui_set_tag(LAYER[1], "Head_3", TAG_FQN, present=True, user="alice")  # the server posts, signed
    assert [(url.rstrip("/"), status) for url, status in stub.webhook_posts] == [(webhook, 200)]
    entry = store.list(MODEL)[0]
    assert (entry.short, entry.by, entry.source) == ("1.3", "alice", "openmetadata")

    stub.state.entities["events/subscriptions"].clear()  # the next change is not delivered: replayed by hand
    stub.ui_set_tag(LAYER[1], "Head_3", TAG_FQN, present=False, user="mallory")
    body = json.dumps(stub.state.events[-1]).encode()
    before = store.list(MODEL)
    for signature in (None, "sha256=" + "0" * 64, sign("wrong-secret", body)):
        status, _ = _post(webhook, body, signature)
        assert status == 401 and store.list(MODEL) == before
    status, answer = _post(webhook, body, sign(SECRET, body))
    assert status == 200 and answer["removed"] == ["1.3"] and store.list(MODEL) == []
    assert _post(webhook, b"not json", sign(SECRET, b"not json"))[0] == 400


def test_poll_reads_incremental_change_before_the_merged_one(gov, stub):
    gov.bootstrap()
    gov.poll()  # position the cursor after the bootstrap's events
    # two edits by one user within minutes: the server merges them, so the second event's
    # changeDescription nets to nothing while its incrementalChangeDescription says "removed"
    stub.ui_set_tag(LAYER[0], "Head_1", TAG_FQN, present=True, user="alice")
    stub.ui_set_tag(LAYER[0], "Head_1", TAG_FQN, present=False, user="alice")
    last = stub.state.events[-1]
    assert last["changeDescription"]["fieldsDeleted"] == [] and last["incrementalChangeDescription"]["fieldsDeleted"]
    assert isinstance(last["incrementalChangeDescription"]["fieldsDeleted"][0]["oldValue"], str)  # JSON text
    assert "futureField" in last  # a field the SDK's ChangeEvent model would refuse
    report = gov.poll()
    assert (report.events, report.changes, report.added, report.removed) == (2, 2, ("0.1",), ("0.1",))
    assert gov.masks() == []  # added, then removed: read from the merged description it would stay quarantined
    assert gov.poll().events == 0  # the cursor moved past them


def test_a_pending_local_change_wins_over_an_incoming_event(gov, stub):
    gov.bootstrap()
    gov.poll()
    stub.stop()
    gov.quarantine(["2.2"], reason="offline")
    stub.start()
    stub.ui_set_tag(LAYER[2], "Head_2", TAG_FQN, present=True, user="alice")
    stub.ui_set_tag(LAYER[2], "Head_2", TAG_FQN, present=False, user="alice")
    gov.poll()
    assert [m.short for m in gov.masks()] == ["2.2"]  # the outbox still holds our add


@pytest.mark.parametrize("event, expected", [
    ({"entityType": "table", "entityFullyQualifiedName": LAYER[2], "timestamp": 5, "userName": "u",
      "changeDescription": {"fieldsAdded": [{"name": "columns.Head_1.tags",
                                              "newValue": json.dumps([{"tagFQN": TAG_FQN}])}]}},
     [(2, 1, True)]),
    ({"entityType": "table", "entityFullyQualifiedName": LAYER[0], "unknownField": [1],
      "changeDescription": {"fieldsAdded": [{"name": "columns.Head_1.tags",
                                              "newValue": json.dumps([{"tagFQN": TAG_FQN}])}]},
      "incrementalChangeDescription": {"fieldsDeleted": [{"name": "columns.Head_1.tags",
                                                          "oldValue": [{"tagFQN": TAG_FQN}]}]}},
     [(0, 1, False)]),
    ({"entityType": "table", "entityFullyQualifiedName": LAYER[1],
      "changeDescription": {"fieldsAdded": [{"name": "columns.Head_1.tags",
                                              "newValue": json.dumps([{"tagFQN": "PII.Sensitive"}])}]}}, []),
    ({"entityType": "table", "entityFullyQualifiedName": LAYER[1],
      "changeDescription": {"fieldsUpdated": [{"name": "columns.Head_1.description", "newValue": "x"}]}}, []),
    ({"entityType": "table", "entityFullyQualifiedName": "Synapse_Neural_Service.other.Transformer_Graph.Layer_1",
      "changeDescription": {"fieldsAdded": [{"name": "columns.Head_1.tags",
                                              "newValue": json.dumps([{"tagFQN": TAG_FQN}])}]}}, []),
    ({"entityType": "dashboard", "entityFullyQualifiedName": LAYER[1]}, []),
])
def test_event_parsing(event, expected):
    changes = tag_changes(event, table_layers(MODEL), MODEL.n_heads)
    assert [(c.layer, c.head, c.added) for c in changes] == expected


# ---- CLI -----------------------------------------------------------------------------------


def test_cli_quarantine_commands_and_om_status(stub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path))  # never leave masks in the session's home
    monkeypatch.delenv("SYNAPSE_OM_HOST", raising=False)

    def run(*argv):
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("quarantine", "add", "3.1", "5.2", "--reason", "emits ' Paris'", "--experiment", "abc",
                       "--json")
    assert code == 0 and json.loads(out)["changed"] == ["3.1", "5.2"] and json.loads(out)["mode"] == "embedded"
    code, out, _ = run("quarantine", "list", "--json")
    listed = json.loads(out)
    assert listed["model"] == "SmolLM2-135M-Instruct"
    assert [{k: h[k] for k in ("layer", "head", "reason", "experiment")} for h in listed["masked_heads"]] == [
        {"layer": 3, "head": 1, "reason": "emits ' Paris'", "experiment": "abc"},
        {"layer": 5, "head": 2, "reason": "emits ' Paris'", "experiment": "abc"}]
    assert all(h["at"] for h in listed["masked_heads"])
    code, _, err = run("quarantine", "add", "3.9", "--reason", "x")
    assert code == 2 and err.strip() == "error: head 9 does not exist: layer 3 has heads 0-8"
    assert run("quarantine", "remove", "5.2")[0] == 0
    assert [h["head"] for h in json.loads(run("quarantine", "list", "--json")[1])["masked_heads"]] == [1]
    assert run("quarantine", "clear")[0] == 0
    assert json.loads(run("quarantine", "list", "--json")[1])["masked_heads"] == []
    assert [r["action"] for r in json.loads(run("quarantine", "audit", "--json")[1])["audit"]] == \
        ["add", "remove", "clear"]
    monkeypatch.delenv("SYNAPSE_OM_WEBHOOK_SECRET", raising=False)
    code, _, err = run("webhook", "--port", "8766")
    assert code == 2 and "set SYNAPSE_OM_WEBHOOK_SECRET" in err

    monkeypatch.setenv("SYNAPSE_OM_HOST", stub.url)
    monkeypatch.setenv("SYNAPSE_OM_TOKEN", TOKEN)
    code, out, _ = run("om", "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["mode"] == "openmetadata"
    assert (status["connected"], status["server_version"]) == (True, "2.0.6")
    assert status["pending"] == 2  # the embedded changes wait for this server
    monkeypatch.setenv("SYNAPSE_OM_TOKEN", "not-the-token")
    code, out, err = run("om", "sync")
    assert code == 2 and out == "" and "rejected the token" in err and "not-the-token" not in err


# ---- the masks' effect on a real model -----------------------------------------------------


def test_a_stored_quarantine_masks_the_head_in_every_run(bundled, tmp_path, monkeypatch):
    """The store's masks, as trace and every command apply them, equal zeroing the head's slice of
    the output projection's weight (an independent way of switching the head off)."""
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path))
    MaskStore().add(bundled, ["3.1"], reason="test")
    args = Namespace(mask="", mask_level="projection", no_masks=False)
    masks = run_masks(args, bundled)
    assert [(m.layer, m.head) for m in masks] == [(3, 1)]
    assert run_masks(Namespace(mask="", mask_level="projection", no_masks=True), bundled) == []

    ids = bundled.tokenizer("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    model, arch = bundled.model, bundled.arch
    with torch.no_grad():
        raw = model(input_ids=ids).logits
        with hooks(model, arch, mask_fns(tuple(masks))):
            masked = model(input_ids=ids).logits
        weight = arch.out_proj[3].weight  # (d_model, head * d_head)
        saved = weight[:, arch.d_head * 1: arch.d_head * 2].clone()
        try:
            weight[:, arch.d_head * 1: arch.d_head * 2] = 0
            zeroed = model(input_ids=ids).logits
        finally:
            weight[:, arch.d_head * 1: arch.d_head * 2] = saved
    assert (masked - raw).abs().max() > 1e-3  # the head matters
    torch.testing.assert_close(masked, zeroed, rtol=1e-4, atol=1e-4)

    # "verify" re-runs the evidence prompt: the same numbers, masked and raw
    check = verify(bundled, "The Eiffel Tower is in the city of", " Paris", masks)
    paris = bundled.tokenizer(" Paris", add_special_tokens=False).input_ids[0]
    assert check.prob_raw == pytest.approx(float(raw[0, -1].softmax(-1)[paris]), rel=1e-4)
    assert check.prob_masked == pytest.approx(float(zeroed[0, -1].softmax(-1)[paris]), rel=1e-4)
    assert check.top_raw == " Paris" and check.masks == tuple(masks)
