"""The Ablate page on the real bundled model, driven by widget keys."""
import json

import pytest
from app_helpers import app, chart_frames, metrics

from ui import core

IOI = "When Mary and John went to the store, John gave a drink to"
NAME_MOVER = "23.3"  # zero-ablating it costs the IOI logit difference about 3 (of 6.1)


def ablate_page():
    return app().switch_page("pages/ablate.py").run()


def fill(at, heads: str = NAME_MOVER, prompt: str = IOI, target: str = " Mary", contrast: str = " John",
         op: str = "zero", site: str = "attn.head"):
    at.selectbox(key="ablate_site").set_value(site)
    at.selectbox(key="ablate_op").set_value(op)
    at.run()  # the inputs of this site and operation appear
    if site == "attn.head":
        at.text_input(key="ablate_heads").input(heads)
    at.text_area(key="ablate_prompt").input(prompt)
    at.text_input(key="ablate_target").input(target)
    at.text_input(key="ablate_contrast").input(contrast)
    return at.run()


def test_spaceless_target_is_warned_with_both_spellings():
    at = fill(ablate_page(), target="Mary", contrast="John")
    (warning,) = at.warning  # the tokenizer's warnings, once, by the target input
    assert "'Mary' is split as ['Mary'] but ' Mary' as [' Mary']; mind the leading space" in warning.value
    assert "contrast: 'John' is split as ['John'] but ' John' as [' John']" in warning.value


def table(at, first_column: str):
    """The dataframe whose first column is `first_column`."""
    (frame,) = [d.value for d in at.dataframe if list(d.value.columns[:1]) == [first_column]]
    return frame


def test_head_zero_ablation_on_ioi_shows_clean_vs_intervened_and_a_rerun_comes_from_the_store():
    at = fill(ablate_page())
    assert "Scored on token `·Mary` (5099) against `·John` (2322)" in [c.value for c in at.caption]
    at.button(key="ablate_run_button").click().run()
    assert not at.exception and not at.error
    exp = at.session_state[core.ABLATE_RUN]
    key = exp.hash
    rows = table(at, "metric").set_index("metric")
    prob, diff, kl = rows.loc["p(target)"], rows.loc["logit(target) - logit(contrast)"], rows.loc[
        "KL(clean || intervened), nats"]
    assert prob["clean"] > 0.8
    assert 5.5 < diff["clean"] < 6.5 and 2.5 < diff["intervened"] < 3.6  # the name mover carries half of it
    assert abs(diff["change"] - (diff["intervened"] - diff["clean"])) < 1e-6
    assert 0 < kl["intervened"] < 1
    cards = metrics(at)
    assert cards["logit diff"] == f"{diff['intervened']:.4f}"
    assert next(m for m in at.metric if m.label == "logit diff").delta == f"{diff['change']:+.4f}"
    assert cards["KL (nats)"] == f"{kl['intervened']:.4g}"
    assert cards["Top-1"] == "·Mary"  # still the top token: half the logit difference remains
    clean_top, intervened_top = (d.value for d in at.dataframe if list(d.value.columns[:2]) == ["rank", "token"])
    assert clean_top["token"][0] == "·Mary" and clean_top["prob"][0] == prob["clean"]
    assert intervened_top["prob"][0] < clean_top["prob"][0]
    assert not at.warning  # targets spelled as the model predicts them (leading space) are not nagged
    assert f"Computed and stored · experiment `{key}`" in [c.value for c in at.caption]
    assert any(f"(ablate?experiment={key})" in m.value for m in at.markdown)  # the share link
    assert len(at.get("download_button")) == 2

    at.button(key="ablate_run_button").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value == f"Answered from the store · experiment `{key}`"
    assert table(at, "metric").set_index("metric").loc["p(target)", "clean"] == prob["clean"]


def test_head_sweep_renders_a_270_cell_causal_map():
    at = fill(app(masks="5.5").switch_page("pages/ablate.py").run())  # a head masked in every run
    at.button(key="ablate_sweep_button").click().run()
    assert not at.exception and not at.error
    (heatmap,) = chart_frames(at)
    assert len(heatmap) == 270 and set(heatmap["layer"]) == set(range(30)) and set(heatmap["head"]) == set(range(9))
    worst = heatmap.loc[heatmap["effect"].idxmin()]
    assert worst["name"] == "23.3" and worst["full name"] == "layers.23.attn.head.3" and worst["effect"] < -2.5
    top = table(at, "layer")
    assert top["name"][0] == "23.3" and "full name" not in top  # largest effects first, heads named as on every page
    # the masked head is marked, not drawn as a quiet head
    assert heatmap.loc[heatmap["masked"], ["layer", "head"]].values.tolist() == [[5, 5]]
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["color"]["scale"]["domainMid"] == 0
    assert spec["encoding"]["stroke"]["condition"]["test"] == "datum.masked"
    assert any("270 interventions in" in c.value for c in at.caption)


def test_ablating_a_head_masked_in_every_run_says_so_instead_of_green_zeros():
    at = fill(app(masks=NAME_MOVER).switch_page("pages/ablate.py").run())
    at.button(key="ablate_run_button").click().run()
    assert not at.exception and not at.error
    (warning,) = at.warning
    assert warning.value.startswith("Head 23.3 is already masked in every run")
    assert "zeroing changes nothing" in warning.value and "Use raw model (ignore quarantine)" in warning.value
    cards = [m for m in at.metric if m.label in ("p(target)", "logit diff")]
    assert [m.delta for m in cards] == ["+0.0000", "+0.0000"]
    assert all(m.proto.color == m.proto.MetricColor.GRAY for m in cards)  # not a green "+0.0000"
    assert any("**Intervened**: `23.3` (zero)" in m.value for m in at.markdown)  # one name for a head


def test_prompt_set_from_lines_and_from_csv_shows_one_row_per_prompt():
    at = fill(ablate_page())
    at.text_area(key="ablate_promptset_text").input(
        f'{IOI} | " Mary" | " John"\nWhen Tom and Anna sat down at the table, Anna passed the salt to | " Tom" | " Anna"')
    at.button(key="ablate_promptset_button").click().run()
    assert not at.exception and not at.error
    rows = table(at, "prompt")
    assert len(rows) == 2 and list(rows["target"]) == ["·Mary", "·Tom"]
    assert (rows["change"] == rows["intervened_logit_diff"] - rows["clean_logit_diff"]).all()
    cards = metrics(at)
    assert cards["Mean Δ logit_diff"] == f"{rows['change'].mean():+.4f}"
    assert cards["Top-1 changed"] == f"{rows['top1_changed'].mean():.0%}"

    csv = f'prompt,target,contrast\n"{IOI}", Mary, John\nThe capital of France is, Paris,\n'
    at.file_uploader(key="ablate_promptset_csv").set_value(("set.csv", csv.encode(), "text/csv"))
    at.selectbox(key="ablate_metric").set_value("log_prob")  # the second prompt has no contrast
    at.button(key="ablate_promptset_button").click().run()
    assert not at.exception and not at.error
    rows = table(at, "prompt")
    assert list(rows["prompt"]) == [IOI, "The capital of France is"] and list(rows["target"]) == ["·Mary", "·Paris"]
    assert metrics(at)["Mean Δ log_prob"] == f"{rows['change'].mean():+.4f}"


def test_patch_from_itself_changes_nothing_and_mean_ablation_says_how_it_averaged():
    at = fill(ablate_page(), site="mlp", op="patch")
    at.number_input(key="ablate_layer").set_value(5)
    at.text_area(key="ablate_source").input(IOI)
    at.button(key="ablate_run_button").click().run()
    assert not at.exception and not at.error
    rows = table(at, "metric").set_index("metric")
    assert (rows["change"].abs() < 1e-5).all()
    assert "layers.5.mlp" in at.session_state[core.ABLATE_RUN].config.title

    at.selectbox(key="ablate_op").set_value("mean").run()
    at.text_area(key="ablate_reference").input(  # the user's own reference set, both longer than the prompt
        "The old lighthouse keeper climbed the winding stairs every evening to light the lamp before the ships came.\n"
        "In the spring the farmers plant their seeds, and by late summer the fields are full of golden wheat again.")
    at.button(key="ablate_run_button").click().run()
    assert not at.exception and not at.error
    assert any(c.value.startswith("Notes: mean ablation: mean over 2 reference prompts at each position")
               for c in at.caption)
    assert abs(table(at, "metric").set_index("metric").loc["p(target)", "change"]) > 1e-4


def test_bad_input_is_an_error_and_leaves_no_result():
    at = fill(ablate_page(), prompt="")
    cases = [
        ({}, "the prompt is empty"),
        ({"ablate_prompt": IOI, "ablate_heads": "3.9"}, "head 9 does not exist"),
        ({"ablate_heads": "3.x"}, "is not a head"),
        ({"ablate_heads": NAME_MOVER, "ablate_positions": "0, 99"}, "position 99 does not exist"),
        ({"ablate_positions": "all", "ablate_op": "steer"}, "steering adds a d_model vector"),
        ({"ablate_op": "patch"}, "patching needs a source prompt"),
    ]
    for inputs, message in cases:
        for key, value in inputs.items():
            widget = at.selectbox(key=key) if key == "ablate_op" else (
                at.text_area(key=key) if key == "ablate_prompt" else at.text_input(key=key))
            widget.set_value(value)
        at.run()
        at.button(key="ablate_run_button").click().run()
        assert not at.exception
        assert [message in e.value for e in at.error] == [True], (inputs, [e.value for e in at.error])
        assert core.ABLATE_RUN not in at.session_state


def eiffel_features(top: int, lines: str = ""):
    """The Ablate page on the Eiffel prompt (and the prompt-set `lines`), sweeping the `top` most active
    features of the layer-15 SAE."""
    at = fill(ablate_page(), prompt="The Eiffel Tower is in the city of", target=" Paris", contrast="")
    if lines:
        at.text_area(key="ablate_promptset_text").input(lines)
    at.radio(key="ablate_sweep_over").set_value("features").run()
    at.selectbox(key="ablate_sweep_sae").set_value("layers.15.resid.post.sae")
    at.number_input(key="ablate_sweep_top").set_value(top)
    return at


def test_feature_sweep_zeroes_the_most_active_features_one_at_a_time():
    at = eiffel_features(6)
    at.button(key="ablate_sweep_button").click().run()
    assert not at.exception and not at.error
    exp = at.session_state[core.ABLATE_SWEEP]
    r = exp.result
    assert r.kind == "features" and len(r.features) == 6 and exp.config.sweep_features == r.features
    (bars,) = chart_frames(at)
    assert sorted(bars["name"]) == sorted(f"layers.15.resid.post.sae.{f}" for f in r.features)
    assert (bars["effect"] != 0).any()  # features active on the prompt: zeroing some of them moves log p
    top = table(at, "feature")
    assert top["effect"].abs().is_monotonic_decreasing
    assert any("6 features of layers.15.resid.post.sae (error term kept)" in c.value for c in at.caption)


def test_a_sweep_over_the_prompt_set_draws_the_mean_map_and_each_prompt():
    """The Sweep section's settings on every prompt of the set: each prompt's map is that prompt's own
    sweep, the chart is their mean, and the table says, per prompt, the clean metric and what moved it most."""
    from synapse_core import load_model
    from synapse_core.interventions.sweep import sweep_features

    at = eiffel_features(5, 'The Eiffel Tower is in the city of | " Paris"\n'
                            'The capital of France is the city of | " Paris"')
    at.button(key="ablate_promptsweep_button").click().run()
    assert not at.exception and not at.error
    exp = at.session_state[core.ABLATE_PROMPTSWEEP]
    r = exp.result
    assert exp.config.kind == "promptsweep" and r.kind == "features" and len(r.sweeps[0].features) == 5
    handle, sae = load_model("bundled"), "layers.15.resid.post.sae"
    mean = {}
    for case, s in zip(r.cases, r.sweeps):
        alone = sweep_features(handle, case.prompt, case.target, sae, s.features, case.contrast)
        assert alone.effects[0] == pytest.approx(s.effects[0], abs=1e-5)
        for f, e in zip(alone.features, alone.effects[0]):
            mean[f"{sae}.{f}"] = mean.get(f"{sae}.{f}", 0.0) + float(e) / len(r.cases)
    (bars,) = chart_frames(at)
    assert dict(zip(bars["name"], bars["effect"])) == pytest.approx(mean, abs=1e-5)
    assert max(abs(v) for v in mean.values()) > 1e-3  # the features move log p on these prompts
    prompts = table(at, "prompt")
    assert list(prompts["prompt"]) == [c.prompt for c in r.cases] and list(prompts["target"]) == ["·Paris"] * 2
    assert list(prompts["clean"]) == pytest.approx([s.clean for s in r.sweeps])
    assert any("on each of 2 prompts" in c.value for c in at.caption)

    at.radio(key="ablate_sweep_over").set_value("layers").run()
    at.button(key="ablate_promptsweep_button").click().run()
    assert not at.exception and not at.error
    r = at.session_state[core.ABLATE_PROMPTSWEEP].result
    assert r.kind == "layers" and r.mean_effects.shape == (3, 30)
    (cells,) = chart_frames(at)
    assert len(cells) == 90 and cells["effect"].abs().max() == pytest.approx(float(abs(r.mean_effects).max()))
