"""Sweeps, prompt sets, experiments and the ablate/sweep CLI on the bundled SmolLM2-135M-Instruct."""
import json

import pytest

from synapse_core.arch.spec import Intervention
from synapse_core.cli.main import main
from synapse_core.experiments.records import run_experiment, sweep_config
from synapse_core.experiments.store import ResultStore
from synapse_core.interventions.metrics import resolve_target
from synapse_core.interventions.ops import OpSettings, forward_last, prepare
from synapse_core.interventions.promptset import evaluate_prompt_set, parse_prompt_lines
from synapse_core.interventions.sweep import batched_scores, one_by_one_scores
from synapse_core.model.tokens import encode_prompt

PROMPT = "The Eiffel Tower is located in the city of"


def test_batched_head_sweep_equals_one_by_one(bundled):
    ids = encode_prompt(bundled, PROMPT)[0]
    target = resolve_target(bundled, " Paris", " London")
    ivs = [Intervention(layer, "attn.head", "zero", head) for layer in (0, 1, 15, 29) for head in range(9)]
    ivs += [Intervention(layer, site, "mean") for layer in (2, 28) for site in ("attn", "mlp", "resid")]
    prepared = prepare(bundled, ids, ivs, OpSettings())
    clean = forward_last(bundled, ids, {})[0]
    batched, passes = batched_scores(bundled, ids, prepared, target, batch_rows=18)
    single = one_by_one_scores(bundled, ids, prepared, target, clean)
    assert passes == 3
    for key in ("log_prob", "logit_diff", "target_prob", "kl"):
        assert float((batched[key] - single[key]).abs().max()) < 1e-4, key
    assert bool((batched["top_id"] == single["top_id"]).all())


def test_full_head_sweep_through_the_cli_and_the_store(bundled, capsys):
    argv = ["sweep", "--prompt", PROMPT, "--target", " Paris", "--contrast", " London", "--device", "cpu",
            "--dtype", "float32", "--no-masks", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    payload = json.loads(out)
    assert set(payload) == {"metric", "clean", "effects", "seconds", "experiment"}
    assert payload["metric"] == "logit_diff" and len(payload["effects"]) == 270
    assert {(e["layer"], e["head"]) for e in payload["effects"]} == {(l, h) for l in range(30) for h in range(9)}
    effects = [abs(e["effect"]) for e in payload["effects"]]
    assert max(effects) > 0.1  # some head matters for this fact
    config = sweep_config(bundled, PROMPT, " Paris", " London")
    assert config.hash == payload["experiment"]
    exp = run_experiment(bundled, config, ResultStore())  # the CLI's store: answered from it
    assert exp.from_cache
    cell = exp.result.effects[payload["effects"][100]["layer"], payload["effects"][100]["head"]]
    assert float(cell) == pytest.approx(payload["effects"][100]["effect"], abs=1e-6)


def test_ablate_cli_on_the_bundled_model(capsys):
    argv = ["ablate", "--prompt", PROMPT, "--target", " Paris", "--heads", "5.3,12.4", "--mode", "patch",
            "--source-prompt", "The Colosseum is in the city of", "--device", "cpu", "--dtype", "float32",
            "--no-masks", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    payload = json.loads(out)
    assert payload["clean"]["top_token"] == " Paris" and payload["clean"]["logit_diff"] is None
    assert payload["kl_divergence"] > 0 and "aligned from the end" in err


def test_prompt_set_on_the_bundled_model(bundled):
    cases = parse_prompt_lines('''
        The Eiffel Tower is located in the city of | " Paris" | " London"
        The Colosseum is located in the city of | " Rome" | " Paris"
        Big Ben is located in the city of | " London" | " Paris"
    ''')
    result = evaluate_prompt_set(bundled, cases, [Intervention(29, "resid", "zero", positions="last")])
    assert result.metric == "logit_diff" and len(result.rows) == 3
    assert all(row.clean.logit_diff > 0 for row in result.rows)  # the model knows these
    assert all(row.intervened.logit_diff == pytest.approx(0.0, abs=1e-4) for row in result.rows)  # zeroed stream
    assert result.mean_change == pytest.approx(-sum(r.clean.logit_diff for r in result.rows) / 3, abs=1e-4)
    assert result.top1_changed_fraction == 1.0
