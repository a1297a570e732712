"""The Trace page's logit lens on the real bundled model: a layer x prompt-position heatmap of the chosen
token, whose cells are the engine's logit lens and whose top row is the model's own next-token
distribution at every position."""
import numpy as np
import pytest
import torch
from app_helpers import PROMPT, chart_frames, run_trace, trace_page

from synapse_core.analysis.lens import logit_lens
from ui import core
from ui import lens as ui_lens


def lens_frame(at):
    (frame,) = [f for f in chart_frames(at) if {"layer", "pos", "p", "rank", "top"} <= set(f.columns)]
    return frame


def grid(frame, column):
    """(row, pos) array of one column, rows in the lens's order (embed, 0 .. 29)."""
    return frame.pivot(index="order", columns="pos", values=column).sort_index().to_numpy()


def test_lens_of_the_first_generated_token_is_the_engines_and_its_top_row_the_models_prediction():
    at = run_trace(trace_page())
    assert not at.exception and not at.error
    result = at.session_state[core.TRACE_RUN].result
    handle = core.load_model(at.session_state[core.LOADED_SPEC])
    frame = lens_frame(at)
    n_prompt = len(result.prompt_ids)
    assert grid(frame, "p").shape == (31, n_prompt)  # embeddings + 30 layers, x every prompt position
    assert list(frame.drop_duplicates("order")["layer"])[:2] == ["embed", "0"]

    direct = logit_lens(handle, list(result.prompt_ids), token_id=result.generated_ids[0])
    assert direct.token == result.generated_tokens[0] == " Paris"  # the default: the first generated token
    cell = frame[(frame["layer"] == "15") & (frame["pos"] == 3)].iloc[0]
    assert abs(cell["p"] - direct.probs[16, 3]) < 1e-6 and cell["rank"] == direct.ranks[16, 3]
    assert cell["top"].startswith(repr(direct.top_tokens[16][3][0]))
    assert np.abs(grid(frame, "p") - direct.probs).max() < 1e-6

    with torch.inference_mode():
        logits = handle.model(input_ids=torch.tensor([result.prompt_ids]), use_cache=False).logits[0].float()
    probs = torch.softmax(logits, -1)[:, result.generated_ids[0]].numpy()  # (pos,)
    assert np.abs(grid(frame, "p")[-1] - probs).max() < 1e-5
    assert abs(grid(frame, "p")[-1, -1] - result.model_probs[0]) < 1e-4  # the trace's own p(' Paris')
    assert grid(frame, "rank")[-1, -1] == 0 and grid(frame, "rank")[0, -1] > 0


@pytest.mark.slow  # three more traces and lenses on the bundled model: the slow tier (CI runs it)
def test_choosing_another_generated_token_or_typing_one_follows_it():
    at = run_trace(trace_page())
    result = at.session_state[core.TRACE_RUN].result
    first = grid(lens_frame(at), "p")
    at.selectbox(key=ui_lens.TRACE_TOKEN).set_value(1).run()
    assert not at.exception and not at.error
    second = lens_frame(at)
    handle = core.load_model(at.session_state[core.LOADED_SPEC])
    direct = logit_lens(handle, list(result.prompt_ids), token_id=result.generated_ids[1])
    assert np.abs(grid(second, "p") - direct.probs).max() < 1e-6 and not np.allclose(grid(second, "p"), first)

    at.text_input(key=ui_lens.TRACE_OTHER).input(" London").run()
    assert not at.exception and not at.error
    typed = logit_lens(handle, PROMPT, " London")
    assert np.abs(grid(lens_frame(at), "p") - typed.probs).max() < 1e-6
    assert any("p(' London')" in c.value for c in at.caption)
