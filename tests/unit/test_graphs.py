"""Attribution graphs on tiny random-init models: the frozen model equals the real one on the prompt,
completeness holds at every node, values are exact ablation effects in the frozen model, edges are
direct effects, influence is (I - Â)^-1 - I, pruning keeps what it says, bad input is refused."""
from __future__ import annotations

import json

import pytest
import torch

from synapse_core.arch.spec import HeadMask
from synapse_core.common.errors import BadInput, UnsupportedModel
from synapse_core.graphs import adjacency as adjacency_module
from synapse_core.graphs.adjacency import build_adjacency
from synapse_core.graphs.build import build_graph, graph_target
from synapse_core.graphs.frozen import GRAPH_FAMILIES, capture_run, frozen_forward, frozen_mlp, output_gradients
from synapse_core.graphs.graph import circuit_tracer_json, edges_csv, nodes_csv, with_thresholds
from synapse_core.graphs.prune import find_threshold, graph_scores, influence, keep_nodes, prune
from synapse_core.graphs.supernodes import group, merge, rename, split
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.ops import forward_last

PROMPT = "the cat sat on the mat and the dog"  # 9 tokens, longer than the sliding window


@pytest.fixture(params=tuple(GRAPH_FAMILIES))
def graph_handle(request, tiny):
    return tiny.make_handle(request.param)


def _run(handle, masks=()):
    target = graph_target(handle, "ran", "sat")
    ids = handle.tokenizer(PROMPT, return_tensors="pt").input_ids
    return ids, target, capture_run(handle, ids, target, masks)


def test_frozen_model_reproduces_the_real_output_and_capture_changes_nothing(graph_handle):
    ids, target, run = _run(graph_handle)
    plain = forward_last(graph_handle, ids, {})[0]
    assert run.output == pytest.approx(float(plain[target.id] - plain[target.contrast_id]), abs=1e-5)
    output, xs, _ = frozen_forward(graph_handle, run)
    assert float(output) == pytest.approx(run.output, abs=1e-4)
    assert torch.allclose(xs[-1], run.x[-1], atol=1e-4)


def test_every_node_is_its_incoming_edges_plus_constant(graph_handle):
    _, _, run = _run(graph_handle, masks=(HeadMask(0, 1), HeadMask(1, 2, "attention")))
    adj = build_adjacency(graph_handle, run)
    errors = adj.completeness_errors()
    assert float(errors[-1]) < 1e-4  # the output, against the real model's logit difference
    assert float(errors.max()) < 1e-4
    assert float(adj.matrix.abs().sum()) > 1.0  # not vacuous: there are edges
    assert torch.count_nonzero(torch.triu(adj.matrix)) == 0  # every edge points forward


def test_a_value_is_the_exact_effect_of_removing_the_node_in_the_frozen_model(graph_handle):
    _, _, run = _run(graph_handle)
    adj = build_adjacency(graph_handle, run)
    layout, n_pos = adj.layout, run.n_pos
    base, _, _ = frozen_forward(graph_handle, run)
    cases = {("h", 1): layout.head_start(1) + (n_pos - 1) * layout.n_heads + 2,  # head 1.2 at the last position
             ("x", 1): layout.mlp_start(0) + n_pos - 1,  # MLP 0 at the last position
             ("x", 0): n_pos - 2}  # a token
    for site, i in cases.items():
        delta = torch.zeros(n_pos, adj.writes.shape[1])
        delta[int(adj.positions[i])] = -adj.writes[i]
        out, _, _ = frozen_forward(graph_handle, run, {site: delta})
        assert float(out - base) == pytest.approx(-float(adj.values[i]), abs=1e-5)
        assert abs(float(adj.values[i])) > 1e-4  # a node that matters


def test_an_edge_into_an_mlp_is_the_direct_effect_of_its_source(graph_handle):
    _, _, run = _run(graph_handle)
    adj = build_adjacency(graph_handle, run)
    g_x, _ = output_gradients(graph_handle, run)
    layer, p = 1, run.n_pos - 1
    target = adj.layout.mlp_start(layer) + p
    source = adj.layout.head_start(0) + p * adj.layout.n_heads + 3
    h = run.x[layer] + run.attn_out[layer]
    without = h.clone()
    without[p] -= adj.writes[source]
    change = (frozen_mlp(graph_handle, layer, h, run) - frozen_mlp(graph_handle, layer, without, run))[p]
    assert float(adj.matrix[target, source]) == pytest.approx(float(change @ g_x[layer + 1][p]), abs=1e-5)


def test_masked_heads_have_no_value_and_no_edges(llama):
    _, _, run = _run(llama, masks=(HeadMask(1, 3),))
    adj = build_adjacency(llama, run)
    rows = [adj.layout.head_start(1) + q * adj.layout.n_heads + 3 for q in range(run.n_pos)]
    assert float(adj.values[rows].abs().max()) == 0.0
    assert float(adj.matrix[rows].abs().max()) == 0.0
    assert float(adj.matrix[:, rows].abs().max()) == 0.0


def _random_dag(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen) * (torch.rand(n, n, generator=gen) > 0.4)
    return torch.tril(a, -1)


def test_influence_is_the_inverse_series_by_back_substitution_and_by_neumann():
    a = _random_dag()
    n = a.shape[0]
    norm = a.abs() / a.abs().sum(1, keepdim=True).clamp_min(1e-10)
    w = torch.zeros(n)
    w[-1] = 1.0
    expected = w @ (torch.linalg.inv(torch.eye(n) - norm) - torch.eye(n))
    assert torch.allclose(influence(a, w, tuple(range(n + 1))), expected, atol=1e-5)
    assert torch.allclose(influence(a, w), expected, atol=1e-5)
    assert float(expected.abs().sum()) > 0.1


def test_node_pruning_keeps_the_share_it_promises_and_edge_pruning_too():
    a = _random_dag(30, seed=3)
    kinds = ("token",) * 3 + ("head",) * 26 + ("logit",)
    w = torch.zeros(30)
    w[-1] = 1.0
    infl = influence(a, w)
    share = infl / infl.sum()
    order = torch.argsort(infl, descending=True)
    cumulative = torch.empty(30)
    cumulative[order] = torch.cumsum(share[order], 0)
    mask = keep_nodes(cumulative, share, kinds, 0.8)
    computed = torch.tensor([k == "head" for k in kinds])
    kept_share = float(share[mask & computed].sum() + share[~computed].sum())
    assert kept_share >= 0.8
    assert not bool(mask.all())  # something was pruned
    pruned = prune(a, mask, kinds, 0.98)
    scores = pruned.edge_scores
    by_score = scores >= find_threshold(scores, 0.98)
    assert float(scores[by_score].sum()) >= 0.98 * float(scores.sum()) - 1e-6
    assert int(by_score.sum()) < int((scores > 0).sum())  # some edges fell below the cut
    assert not bool((pruned.edge_mask & ~by_score).any())  # cleanup only removes edges
    assert bool(pruned.node_mask[:3].all()) and bool(pruned.node_mask[-1])


def test_scores_are_one_without_error_nodes_and_count_error_influence():
    a = _random_dag(10, seed=5)
    w = torch.zeros(10)
    w[-1] = 1.0
    infl = influence(a, w)
    assert graph_scores(a, ("token",) * 9 + ("logit",), infl) == (1.0, 1.0)
    kinds = ("token",) * 4 + ("error",) * 2 + ("feature",) * 3 + ("logit",)
    replacement, completeness = graph_scores(a, kinds, infl)
    tokens, errors = float(infl[:4].sum()), float(infl[4:6].sum())
    assert replacement == pytest.approx(tokens / (tokens + errors))
    assert 0.0 < completeness < 1.0


def test_graph_claims_are_real_ablations_and_pool_pruning_is_exact(llama):
    g = build_graph(llama, PROMPT, "ran", "sat", claims=5)
    assert g.completeness_error < 1e-4
    assert sum(w for _, w in g.logit_inputs) + g.output_constant == pytest.approx(g.output_value, abs=1e-4)
    claim = g.claims[0]
    node = g.node(claim.node)
    assert claim.claimed == pytest.approx(-node.value)
    from synapse_core.graphs.claims import intervention_of

    real = ablate(llama, PROMPT, "ran", [intervention_of(node)], contrast="sat")
    assert claim.measured == pytest.approx(real.delta("logit_diff"), abs=1e-4)
    looser = with_thresholds(g, 0.9, 0.99)
    assert {n.id for n in g.nodes} <= {n.id for n in looser.nodes}
    assert len(looser.edges) >= len(g.edges)
    with pytest.raises(BadInput, match="node threshold"):
        with_thresholds(g, 0.999, 0.98)


def test_exports_are_circuit_tracer_json_and_csv(llama):
    g = build_graph(llama, PROMPT, "ran", claims=0)
    doc = json.loads(json.dumps(circuit_tracer_json(g)))
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    ids = {n["node_id"] for n in doc["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in doc["links"])
    assert sum(n["feature_type"] == "logit" for n in doc["nodes"]) == 1
    assert nodes_csv(g).splitlines()[0].startswith("id,kind,layer,head")
    assert len(edges_csv(g).splitlines()) == len(g.edges) + 1
    assert g.contrast is None and g.output_label == "logit('ran')"


def test_supernodes_merge_split_rename_and_refuse_unknown_names(llama):
    g = build_graph(llama, PROMPT, "ran", "sat", claims=0)
    ids = [n.id for n in g.nodes if n.kind in ("head", "mlp")][:4]
    g = group(g, ids[:2], "a")
    g = group(g, ids[2:4], "b")
    merged = merge(g, ["a", "b"], "ab")
    assert [s.name for s in merged.supernodes if s.name == "ab"] and set(ids) <= set(
        next(s for s in merged.supernodes if s.name == "ab").members)
    assert "ab" not in {s.name for s in split(merged, "ab").supernodes}
    assert "c" in {s.name for s in rename(g, "a", "c").supernodes}
    with pytest.raises(BadInput, match="'zz' does not exist"):
        split(g, "zz")
    with pytest.raises(BadInput, match="already called"):
        rename(g, "a", "b")


def test_bad_input_is_refused_with_the_bad_value_named(llama, monkeypatch, tiny):
    with pytest.raises(BadInput, match="'ran sat' is 2 tokens"):
        build_graph(llama, PROMPT, "ran sat")
    with pytest.raises(BadInput, match="empty"):
        build_graph(llama, "  ", "ran")
    with pytest.raises(UnsupportedModel, match="gpt2"):
        build_graph(tiny.make_handle("gpt2"), PROMPT, "ran")
    monkeypatch.setattr(adjacency_module, "MAX_ADJACENCY_BYTES", 4 * 80 ** 2)  # 80 nodes: 11 a token, 7 tokens
    with pytest.raises(BadInput, match="9 tokens; attribution graphs of this model are limited to 7"):
        build_graph(llama, PROMPT, "ran")


def test_a_graph_is_a_stored_experiment_listed_reopened_and_exported(llama, tmp_path):
    from synapse_core.common.errors import StoreError
    from synapse_core.experiments.graphs import graph_config, load_graph, run_graph, save_graph
    from synapse_core.experiments.records import export_csv, export_json, list_experiments
    from synapse_core.experiments.store import ResultStore

    store = ResultStore(tmp_path / "results")
    config = graph_config(llama, PROMPT, "ran", "sat", claims=3)
    first = run_graph(llama, config, store)
    again = run_graph(llama, config, store)
    assert not first.from_cache and again.from_cache and again.hash == first.hash == config.hash
    assert graph_config(llama, PROMPT, "ran", "dog").hash != config.hash
    (summary,), problems = list_experiments(store, kind="graph")
    assert summary.hash == first.hash and "completeness error" in summary.headline and not problems
    assert json.loads(export_json(again))["result"]["output_value"] == pytest.approx(first.result.output_value)
    assert export_csv(again).splitlines()[0].startswith("id,kind,layer")
    ids = [n.id for n in first.result.nodes if n.kind in ("head", "mlp")][:2]
    save_graph(store, first, group(first.result, ids, "named"))
    assert [s.name for s in load_graph(store, first.hash).result.supernodes][-1] == "named"
    store.put("0" * 16, "trace", "not a graph")
    with pytest.raises(StoreError, match="not an experiment|not an attribution graph"):
        load_graph(store, "0" * 16)


def _transcoder(layer: int, seed: int = 0, reads: str = "blocks.{}.ln2.hook_normalized"):
    from synapse_core.features.sae import SAEConfig, TopKSAE

    cfg = SAEConfig(d_in=32, d_sae=64, k=4, hook_name=reads.format(layer), d_out=32,
                    hook_name_out=f"blocks.{layer}.hook_mlp_out", apply_b_dec_to_input=False)
    tc = TopKSAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return tc


def test_transcoder_features_and_error_nodes_keep_every_node_exact(llama):
    from synapse_core.graphs.frozen import freeze_transcoder

    _, _, run = _run(llama)
    tc = _transcoder(1)
    adj = build_adjacency(llama, run, {1: tc})
    kinds = list(adj.kinds)
    n_feat, n_err = kinds.count("feature"), kinds.count("error")
    assert 0 < n_feat <= 4 * run.n_pos and n_err == run.n_pos and kinds.count("mlp") == run.n_pos  # layer 0 stays
    assert float(adj.completeness_errors().max()) < 1e-4
    frozen = {1: freeze_transcoder(llama, 1, tc, run)}
    base, _, _ = frozen_forward(llama, run, transcoders=frozen)
    assert float(base) == pytest.approx(run.output, abs=1e-4)  # the replacement model equals the real one here
    i = max((j for j, k in enumerate(kinds) if k == "feature"), key=lambda j: abs(float(adj.values[j])))
    delta = torch.zeros(run.n_pos, 32)
    delta[int(adj.positions[i])] = -adj.writes[i]
    out, _, _ = frozen_forward(llama, run, {("x", 2): delta}, transcoders=frozen)
    assert float(out - base) == pytest.approx(-float(adj.values[i]), abs=1e-5) and abs(float(adj.values[i])) > 1e-4
    assert float(adj.activations[i]) > 0
    infl = influence(adj.matrix, torch.eye(adj.layout.n_nodes)[-1], adj.layout.levels())
    replacement, completeness = graph_scores(adj.matrix, adj.kinds, infl)
    assert 0 < replacement < 1 and 0 < completeness < 1  # error nodes carry some of the influence


def test_graph_with_a_transcoder_and_a_mismatched_one(llama):
    g = build_graph(llama, PROMPT, "ran", "sat", transcoders={1: _transcoder(1)}, node_threshold=0.95, claims=20)
    assert g.completeness_error < 1e-4 and g.replacement_score < 1
    kinds = {n.kind for n in g.pool}
    assert {"feature", "error"} <= kinds and "mlp" in kinds
    checked = {g.node(c.node).kind for c in g.claims}
    assert checked & {"feature", "error"}  # features and error nodes are ablated too
    doc = circuit_tracer_json(with_thresholds(g, 0.95, 1.0))
    assert {"cross layer transcoder", "mlp reconstruction error"} & {n["feature_type"] for n in doc["nodes"]}
    with pytest.raises(BadInput, match="reads blocks.1.hook_resid_post"):
        build_graph(llama, PROMPT, "ran", transcoders={1: _transcoder(1, reads="blocks.{}.hook_resid_post")})
    with pytest.raises(BadInput, match="reads blocks.1.ln2.hook_normalized .* layer 0"):
        build_graph(llama, PROMPT, "ran", transcoders={0: _transcoder(1)})


def test_transcoders_by_folder_are_part_of_the_stored_config(llama, tmp_path):
    from synapse_core.experiments.graphs import graph_config, run_graph
    from synapse_core.experiments.store import ResultStore

    folder = _transcoder(1).save(tmp_path / "tc1")
    config = graph_config(llama, PROMPT, "ran", "sat", claims=0, transcoders=(str(folder),))
    assert config.transcoders[0][0] == str(folder) and len(config.transcoders[0][1]) == 16
    assert config.hash != graph_config(llama, PROMPT, "ran", "sat", claims=0).hash
    exp = run_graph(llama, config, ResultStore(tmp_path / "results"))
    assert any(n.kind == "feature" for n in exp.result.pool) and exp.result.completeness_error < 1e-4
    with pytest.raises(BadInput, match="two transcoders for layer 1"):
        graph_config(llama, PROMPT, "ran", transcoders=(str(folder), str(folder)))
    with pytest.raises(BadInput, match="no SAE named 'layers.9.nothing.sae'"):
        graph_config(llama, PROMPT, "ran", transcoders=("layers.9.nothing.sae",))


def test_a_bfloat16_model_gets_a_float32_frozen_model(tiny):
    handle = tiny.make_handle("llama", dtype=torch.bfloat16)
    g = build_graph(handle, PROMPT, "ran", "sat", claims=3)
    ids = handle.tokenizer(PROMPT, return_tensors="pt").input_ids
    logits = forward_last(handle, ids, {})[0]
    # the graph's run computes attention explicitly (to read the patterns), this one with fused SDPA: in
    # bfloat16 the two round differently
    assert g.output_value == pytest.approx(float(logits[g.target_id] - logits[g.contrast_id]), abs=0.02)
    # the activations were rounded to bfloat16 between layers, the frozen model is not: sums hold to that rounding
    assert g.completeness_error < 0.05 * max(1.0, abs(g.output_value)) and len(g.claims) == 3
