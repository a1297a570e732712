"""synapse_core.analysis.patterns.attention_matrix, the on-demand token x token pattern behind the Trace
page's attention heatmap, on the real bundled model."""
import numpy as np
import pytest

from synapse_core import BadInput, HeadMask
from synapse_core.analysis.patterns import attention_matrix
from synapse_core.analysis.trace import trace


@pytest.fixture(scope="module")
def handle(bundled):
    return bundled


def test_last_row_matches_the_attention_the_trace_recorded(handle):
    result = trace(handle, "The Eiffel Tower is in the city of", max_new_tokens=2)
    ids = result.prompt_ids + result.generated_ids[:1]  # the context that predicted token 1
    for layer, head in [(0, 0), (3, 1), (29, 8)]:
        matrix = attention_matrix(handle, ids, layer, head)
        assert matrix.shape == (len(ids), len(ids))
        np.testing.assert_allclose(matrix[-1], result.attention[1, layer, head, : len(ids)], atol=1e-4)
        np.testing.assert_allclose(matrix.sum(-1), 1.0, atol=1e-4)
        assert np.triu(matrix, k=1).max() == 0  # causal


def test_masks_apply_as_in_the_trace(handle):
    ids = handle.tokenizer("The Eiffel Tower is in the city of").input_ids
    masked = attention_matrix(handle, ids, 3, 1, masks=[HeadMask(3, 1, "attention")])
    assert masked.max() == 0
    upstream = attention_matrix(handle, ids, 5, 0, masks=[HeadMask(2, 4)])
    assert not np.allclose(upstream, attention_matrix(handle, ids, 5, 0))


@pytest.mark.parametrize("layer, head, ids, message", [
    (3, 9, [1, 2], "head 9 does not exist: layer 3 has heads 0-8"),
    (30, 0, [1, 2], "layer 30 does not exist: the model has layers 0-29"),
    (3, 1, [], "no tokens"),
    (3, 1, [10**7], "token id 10000000 does not exist"),
])
def test_bad_input_names_the_bad_value(handle, layer, head, ids, message):
    with pytest.raises(BadInput, match=message):
        attention_matrix(handle, ids, layer, head)
