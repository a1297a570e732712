"""One name for a head in the UI ("0.6"), and masked heads marked on the activity heatmap. Builders
only: no model, no AppTest run."""
import json
from types import SimpleNamespace

import numpy as np

from synapse_core.arch.spec import HeadMask
from ui import trace as ui_trace
from ui.names import short_name, short_names


def test_every_spelling_of_a_head_reads_layer_dot_head():
    assert short_name("layers.0.attn.head.6") == "0.6"
    assert short_name("L23.H5") == "23.5"
    assert short_name("layers.3.mlp") == "layers.3.mlp" and short_name("Prompt_Ingress") == "Prompt_Ingress"
    assert short_names("zero layers.0.attn.head.6, layers.23.attn.head.5 · 'x' → ' y'") == "zero 0.6, 23.5 · 'x' → ' y'"
    assert short_names("largest effect -2.1 at layers.12.attn.head.10") == "largest effect -2.1 at 12.10"


def test_masked_heads_are_outlined_on_the_activity_heatmap():
    activity = np.ones((3, 4), dtype=np.float32)
    activity[1, 2] = 0.0  # masked: reads 0, like a quiet head would
    result = SimpleNamespace(head_activity=activity, step_activity=activity[None], masked_heads=(HeadMask(1, 2),))
    frame = ui_trace.activity_frame(result)
    assert frame.loc[frame["masked"], ["layer", "head"]].values.tolist() == [[1, 2]]
    spec = json.loads(ui_trace.activity_heatmap(frame).to_json())
    stroke, width = spec["encoding"]["stroke"], spec["encoding"]["strokeWidth"]
    assert stroke["condition"]["test"] == "datum.masked" and stroke["condition"]["value"]
    assert width["condition"]["value"] > 0 and width["value"] == 0


def test_attention_cells_are_square_not_flat_strips():
    tokens = ["<|im_start|>", "The", " E", "iff", "el", " Tower", " is", " in", " the", " city"]
    for n in (3, 10, 40, 90):  # (altair refuses to inline more than 5000 cells)
        matrix = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
        spec = json.loads(ui_trace.attention_heatmap(matrix, (tokens * 12)[:n]).to_json())
        extent = ui_trace._label_extent(ui_trace.labels((tokens * 12)[:n]))
        side = spec["height"] - extent  # the matrix itself: the token labels take `extent` on both axes
        assert spec["width"] == side + extent + ui_trace.LEGEND_PX  # as wide as tall: square cells
        assert side / n >= (18 if n <= 50 else 7)  # every row keeps room for its label while they fit
        assert side <= 900
