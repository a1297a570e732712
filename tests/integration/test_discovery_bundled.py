"""Discovery on the bundled SmolLM2-135M-Instruct with the indirect-object prompt.

Measured on this model (CPU, float32): the discovered top-5 circuit lowers logit(" Mary") -
logit(" John") by about 7.0 against 0.47 +- 1.15 for random 5-head sets (about 15x), the target
rate drops from 1 to 0, and Spearman's rho between attribution estimates and verified effects over
the top 30 heads is about 0.80. The thresholds below leave room for other CPUs and library versions.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_cli

from synapse_core.analysis.discovery import discovery_config
from synapse_core.arch.spec import Intervention
from synapse_core.experiments.discoveries import run_discovery
from synapse_core.experiments.store import ResultStore
from synapse_core.interventions.ablation import ablate

ROOT = Path(__file__).resolve().parents[2]
IOI = "When Mary and John went to the store, John gave a drink to"
TARGET, CONTRAST = " Mary", " John"
RHO_FLOOR = 0.5  # measured 0.80


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ResultStore(tmp_path_factory.mktemp("discovery-store"))


@pytest.fixture(scope="module")
def config(bundled):
    return discovery_config(bundled, IOI, TARGET, CONTRAST, top_k_heads=5, max_pair_sweeps=3)


@pytest.fixture(scope="module")
def experiment(bundled, config, store):
    return run_discovery(bundled, config, store)


def test_the_top5_circuit_lowers_the_logit_difference_3x_more_than_random_sets(experiment):
    c = experiment.result.circuit
    drop, random_drop = -c.effect, -c.random_mean
    assert drop > 0 and drop >= 3 * max(random_drop, 0.0), c.verdict
    assert c.beats_random and len(c.random_effects) >= 20 and len(c.heads) == 5
    assert c.target_rate_before == 1.0 and c.target_rate_after < c.target_rate_before


def test_the_circuit_effect_is_a_real_joint_ablation(bundled, experiment):
    c = experiment.result.circuit
    both = ablate(bundled, IOI, TARGET, [Intervention(r.layer, "attn.head", "zero", r.head) for r in c.heads], CONTRAST)
    assert c.effect == pytest.approx(both.delta("logit_diff"), abs=1e-3)


def test_attribution_estimates_correlate_with_verified_effects_over_the_top_30_heads(experiment):
    r = experiment.result
    assert r.rho_heads == 30
    assert r.spearman_rho is not None and r.spearman_rho > RHO_FLOOR, r.spearman_rho


def test_verified_effects_equal_independent_single_head_ablations(bundled, experiment):
    r = experiment.result
    for h in r.heads + r.candidates[-2:]:  # the circuit and the two heads that raise the metric most
        alone = ablate(bundled, IOI, TARGET, [Intervention(h.layer, "attn.head", "zero", h.head)], CONTRAST)
        assert h.verified_effect == pytest.approx(alone.delta("logit_diff"), abs=1e-3), h.name
    assert r.heads[0].verified_effect < -1.0  # one head alone moves the logit difference by more than a logit


def test_the_same_discovery_twice_is_answered_from_the_store(bundled, config, store, experiment):
    again = run_discovery(bundled, config, store)
    assert again.from_cache and not experiment.from_cache and again.hash == experiment.hash
    assert again.result.heads == experiment.result.heads


def cli(*args):
    return run_cli(*args)


def test_cli_discover_json():
    args = ("discover", "--prompt", IOI, "--target", TARGET, "--contrast", CONTRAST, "--top-k", "2",
            "--max-pair-sweeps", "1", "--verify", "10", "--no-masks", "--json")
    out = json.loads(cli(*args).stdout)
    assert [{"layer", "head", "estimated_effect", "verified_effect"} <= set(h) for h in out["heads"]] == [True] * 2
    assert out["circuit_effect"] < out["random_baseline"]["mean"] and out["target_rate"]["before"] == 1.0
    assert len(out["pairs"]) == 1 and out["rank_seconds"] <= out["seconds"] and not out["from_cache"]
    assert json.loads(cli(*args).stdout)["from_cache"]  # a second process reads the first one's result
