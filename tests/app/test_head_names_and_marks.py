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
