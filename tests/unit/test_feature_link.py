"""The Features page link of a feature, and the name of a graph's feature node in the catalog."""
from types import SimpleNamespace

import pytest

from synapse_core.common.errors import BadInput
from ui.feature_link import feature_url, graph_feature_name


def test_feature_url_names_the_feature_in_the_query():
    assert feature_url("layers.15.resid.post.sae.1234") == "features?feature=layers.15.resid.post.sae.1234"
    assert feature_url(" layers.5.resid.post.sae.7 ") == "features?feature=layers.5.resid.post.sae.7"
    with pytest.raises(BadInput, match="'layers.15.resid.post' is not a feature name"):
        feature_url("layers.15.resid.post")


def test_a_graph_feature_node_is_named_by_its_layers_transcoder():
    transcoders = [SimpleNamespace(name="layers.3.mlp.tc", layer=3), SimpleNamespace(name="layers.7.mlp.tc", layer=7)]
    assert graph_feature_name(transcoders, 7, 42) == "layers.7.mlp.tc.42"
    assert graph_feature_name(transcoders, 3, 0) == "layers.3.mlp.tc.0"
    assert graph_feature_name(transcoders, 5, 42) is None  # no catalog transcoder at layer 5
