"""The model as catalog data: tables, columns, lineage, the embedded view, and the evidence block
written into a quarantined head's description. Pure data: no SDK, no server."""
import pytest

from synapse_core.common.errors import BadInput
from synapse_core.governance.catalog import (
    EGRESS,
    INGRESS,
    TAG_FQN,
    build_catalog,
    catalog_rows,
    catalog_tree,
    evidence_markdown,
    parse_evidence,
    parse_head_column,
    parse_layer_table,
    strip_evidence,
    thought_path_edges,
    with_evidence,
)
from synapse_core.governance.maskstore import MaskEntry
from synapse_core.governance.omconfig import OMConfig, config_from_env, config_from_secrets


def test_tables_columns_and_lineage_chain():
    cat = build_catalog("tiny", n_layers=3, n_heads=4, fingerprint="00ff")
    assert [t.name for t in cat.tables] == [INGRESS, "Layer_0", "Layer_1", "Layer_2", EGRESS]
    layer1 = cat.table("Layer_1")
    assert layer1.layer == 1 and [c.name for c in layer1.columns] == ["Head_0", "Head_1", "Head_2", "Head_3"]
    assert {c.data_type for c in layer1.columns} == {"FLOAT"} and [c.head for c in layer1.columns] == [0, 1, 2, 3]
    assert [(e.source, e.target) for e in cat.edges] == [
        (INGRESS, "Layer_0"), ("Layer_0", "Layer_1"), ("Layer_1", "Layer_2"), ("Layer_2", EGRESS)]
    assert all(e.columns == () for e in cat.edges)
    assert (cat.service, cat.schema, cat.classification, cat.tag) == \
        ("Synapse_Neural_Service", "Transformer_Graph", "SynapseQuarantine", "DEFECTIVE")
    assert "00ff" in cat.database_description and "3 layers x 4 heads" in cat.database_description


def test_head_roles_go_into_column_descriptions():
    cat = build_catalog("tiny", 2, 2, roles={(1, 0): "previous-token head"})
    assert cat.head_description(1, 0).endswith("Role: previous-token head.")
    assert "Role" not in cat.head_description(0, 1) and "layers.0.attn.head.1" in cat.head_description(0, 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="", n_layers=2, n_heads=2), "has no name"),
    (dict(model='a"b', n_layers=2, n_heads=2), "cannot name an OpenMetadata Database"),
    (dict(model="m", n_layers=0, n_heads=2), "at least one layer"),
    (dict(model="m", n_layers=2, n_heads=2, roles={(2, 0): "x"}), "head 2.0, which does not exist"),
])
def test_bad_catalogs_name_the_bad_value(kwargs, message):
    with pytest.raises(BadInput, match=message):
        build_catalog(**kwargs)


def test_names_parse_back():
    assert parse_layer_table("Layer_12") == 12 and parse_layer_table("Prompt_Ingress") is None
    assert parse_head_column("Head_3") == 3 and parse_head_column("Head_x") is None


def test_thought_path_is_column_lineage_from_ingress_to_egress():
    cat = build_catalog("tiny", 4, 4)

    class Step:  # what a ThoughtPath's heads look like
        def __init__(self, layer, head):
            self.layer, self.head = layer, head

    edges = thought_path_edges(cat, [Step(0, 3), (1, 2), (3, 0)])
    assert [(e.source, e.target, e.columns) for e in edges] == [
        (INGRESS, "Layer_0", (("prompt_tokens", "Head_3"),)),
        ("Layer_0", "Layer_1", (("Head_3", "Head_2"),)),
        ("Layer_1", "Layer_3", (("Head_2", "Head_0"),)),
        ("Layer_3", EGRESS, (("Head_0", "next_token"),)),
    ]
    with pytest.raises(BadInput, match="from layer 2 to layer 1"):
        thought_path_edges(cat, [(2, 0), (1, 0)])
    with pytest.raises(BadInput, match="head 1.4 does not exist"):
        thought_path_edges(cat, [(1, 4)])
    with pytest.raises(BadInput, match="empty"):
        thought_path_edges(cat, [])


def test_embedded_view_tags_only_quarantined_heads():
    cat = build_catalog("tiny", 2, 3)
    entries = [MaskEntry(1, 2, "both", "emits ' Paris'", experiment="abc")]
    rows = catalog_rows(cat, entries)
    assert len(rows) == 2 * 3 + 2
    tagged = [r for r in rows if r.tags]
    assert [(r.table, r.column, r.tags, r.reason, r.experiment, r.level) for r in tagged] == [
        ("Layer_1", "Head_2", (TAG_FQN,), "emits ' Paris'", "abc", "both")]
    tree = catalog_tree(cat, entries)
    tables = tree["Synapse_Neural_Service"]["tiny"]["Transformer_Graph"]
    assert tables["Layer_1"]["Head_2"] == [TAG_FQN] and tables["Layer_0"]["Head_2"] == []
    assert list(tables) == [INGRESS, "Layer_0", "Layer_1", EGRESS]


def test_evidence_block_round_trips_and_strips():
    entry = MaskEntry(3, 1, "attention", "emits ' Paris'\non every prompt", experiment="a1b2", effect="p 0.8 -> 0.1",
                      prompt="The Eiffel Tower\nis in", target=" Paris", at="2025-01-01T00:00:00+00:00", by="alice")
    base = "Attention head 3.1 (layers.3.attn.head.1)."
    text = with_evidence(base, entry)
    assert text.startswith(base) and evidence_markdown(entry) in text
    fields = parse_evidence(text)
    assert fields == {"reason": "emits ' Paris' on every prompt", "level": "attention", "experiment": "a1b2",
                      "effect": "p 0.8 -> 0.1", "prompt": "The Eiffel Tower\nis in", "target": " Paris",
                      "by": "alice", "at": "2025-01-01T00:00:00+00:00"}
    assert strip_evidence(text) == base
    newer = with_evidence(text, MaskEntry(3, 1, "projection", "second reason"))
    assert newer.count("Quarantined by Synapse") == 1 and parse_evidence(newer)["reason"] == "second reason"
    assert parse_evidence(base) == {} and strip_evidence(None) == ""


def test_config_keeps_the_token_out_of_repr_and_reads_env_and_secrets(monkeypatch):
    token = "eyJhbGciOi.secret-token-4f2a"
    config = OMConfig("http://om.example:8585/", token, webhook_secret="hook-secret")
    assert config.api_url == "http://om.example:8585/api" and config.server == "http://om.example:8585"
    assert token not in repr(config) and "hook-secret" not in repr(config) and token not in str(config)
    monkeypatch.delenv("SYNAPSE_OM_HOST", raising=False)
    assert config_from_env() is None  # embedded mode
    assert config_from_env({"SYNAPSE_OM_HOST": "https://om/api", "SYNAPSE_OM_TOKEN": token}).token == token
    with pytest.raises(BadInput, match="set SYNAPSE_OM_TOKEN"):
        config_from_env({"SYNAPSE_OM_HOST": "http://om"})
    with pytest.raises(BadInput, match="is not a URL"):
        OMConfig("om.example:8585", token)
    section = config_from_secrets({"openmetadata": {"host": "http://om:8585", "token": token, "webhook_secret": "s"}})
    assert (section.server, section.token, section.webhook_secret) == ("http://om:8585", token, "s")
    flat = config_from_secrets({"SYNAPSE_OM_HOST": "http://om2", "SYNAPSE_OM_TOKEN": token})
    assert flat.server == "http://om2"
    assert config_from_secrets({}) is None and config_from_secrets(None) is None
