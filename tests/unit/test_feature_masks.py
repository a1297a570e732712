"""Feature masks beside head masks: one sorted, de-duplicated tuple (heads first), names for both kinds,
and a layer the model lacks refused by name."""
import pytest

from synapse_core.arch.spec import FeatureMask, HeadMask, feature_masks, head_masks, mask_name, normalize_masks
from synapse_core.common.errors import BadInput


def test_masks_of_both_kinds_normalize_heads_first(llama):
    f2, f1 = FeatureMask(1, "layers.1.resid.post.sae.9"), FeatureMask(0, "layers.0.resid.post.sae.3")
    masks = normalize_masks([f2, "1.0", f1, HeadMask(0, 2), f2], llama.arch)
    assert masks == (HeadMask(0, 2), HeadMask(1, 0), f1, f2)
    assert head_masks(masks) == (HeadMask(0, 2), HeadMask(1, 0)) and feature_masks(masks) == (f1, f2)
    assert [mask_name(m) for m in masks] == ["0.2", "1.0", "layers.0.resid.post.sae.3", "layers.1.resid.post.sae.9"]
    assert f1.level == "feature" and f1.head is None  # a feature mask masks no head


def test_a_feature_at_a_layer_the_model_lacks_is_refused_by_name(llama):
    with pytest.raises(BadInput, match="feature layers.7.resid.post.sae.1 sits at layer 7, which does not exist"):
        normalize_masks([FeatureMask(7, "layers.7.resid.post.sae.1")], llama.arch)
