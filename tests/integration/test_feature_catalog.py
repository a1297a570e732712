"""A quarantined SAE feature in the catalog: a DEFECTIVE column of its layer's table with the evidence in
its description, in the embedded view and on a stand-in OpenMetadata server (tests/omstub, which checks
every body against the SDK's own models); releasing it removes the column and leaves the heads alone."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the omstub package

from omstub import OMStub  # noqa: E402
from synapse_core.common.errors import BadInput  # noqa: E402
from synapse_core.governance.catalog import TAG_FQN, build_catalog, feature_column, parse_evidence  # noqa: E402
from synapse_core.governance.featuregov import quarantine_features, release_features  # noqa: E402
from synapse_core.governance.featurestore import FeatureEntry  # noqa: E402
from synapse_core.governance.maskstore import MaskStore, ModelIdentity  # noqa: E402
from synapse_core.governance.omconfig import OMConfig  # noqa: E402
from synapse_core.governance.service import Governance  # noqa: E402

TOKEN = "eyJraWQiOiJzdHViIn0.c3ludGhldGljLWJvdA.sig-feature"
MODEL = ModelIdentity("SmolLM2-135M-Instruct", "0123456789abcdef", n_layers=30, n_heads=9)
FEATURE = "layers.15.resid.post.sae.7"
LAYER_15 = "Synapse_Neural_Service.SmolLM2-135M-Instruct.Transformer_Graph.Layer_15"


@pytest.fixture
def stub():
    with OMStub(token=TOKEN) as server:
        yield server
    assert server.errors == [], server.errors  # every body the SDK sent was valid for its own models


def test_a_feature_is_a_defective_column_of_its_layer_table():
    entry = FeatureEntry(FEATURE, 15, "fires on ' Sydney'", experiment="a1b2c3d4e5f60718", by="tester")
    cat = build_catalog(MODEL.name, 30, 9, features=[entry])
    (col,) = [c for c in cat.table("Layer_15").columns if c.feature]
    assert col.name == feature_column(FEATURE) == "Feature_layers_15_resid_post_sae_7"
    assert col.tags == (TAG_FQN,) and col.data_type == "FLOAT"
    assert FEATURE in col.description and parse_evidence(col.description)["reason"] == "fires on ' Sydney'"
    assert [c.name for c in cat.table("Layer_14").columns] == [f"Head_{h}" for h in range(9)]
    with pytest.raises(BadInput, match="feature layers.15.resid.post.sae.7 sits at layer 15, which tiny does not"):
        build_catalog("tiny", 3, 4, features=[entry])


def test_quarantine_and_release_of_a_feature_reach_openmetadata_and_the_audit_log(stub, tmp_path):
    store = MaskStore(tmp_path / "masks")
    gov = Governance(MODEL, OMConfig(stub.url, TOKEN, "secret"), store=store, user="tester")
    gov.bootstrap()
    report = quarantine_features(gov, [FEATURE], reason="fires on ' Sydney'", experiment="a1b2c3d4e5f60718")
    assert (report.changed, report.delivered, report.error) == ((FEATURE,), 1, None)
    column = stub.column(LAYER_15, feature_column(FEATURE))
    assert [t["tagFQN"] for t in column["tags"]] == [TAG_FQN]
    assert FEATURE in column["description"] and "a1b2c3d4e5f60718" in column["description"]
    assert all(not c.get("tags") for c in stub.table(LAYER_15)["columns"] if c["name"].startswith("Head_"))
    view = {(r.table, r.column): r for r in gov.view()}
    row = view[("Layer_15", feature_column(FEATURE))]
    assert row.tags == (TAG_FQN,) and row.reason == "fires on ' Sydney'" and row.level == "feature"

    again = gov.bootstrap()  # idempotent with the feature column in place
    assert (again.created, again.updated) == ((), ())

    released = release_features(gov, [FEATURE])
    assert released.changed == (FEATURE,) and released.error is None
    assert [c["name"] for c in stub.table(LAYER_15)["columns"]] == [f"Head_{h}" for h in range(9)]
    assert [(r.action, r.heads, r.by) for r in store.audit(MODEL)] == [("add", (FEATURE,), "tester"),
                                                                       ("remove", (FEATURE,), "tester")]
    with pytest.raises(BadInput, match="feature 99999 does not exist: layers.15.resid.post.sae has features 0-4607"):
        quarantine_features(gov, ["layers.15.resid.post.sae.99999"], reason="x")
