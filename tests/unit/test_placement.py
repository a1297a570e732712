"""Device maps (model/placement.py): a model dispatched by accelerate, with its AlignDevicesHook wrappers
on every block, gives the same masked, ablated and swept logits as the same model loaded plainly.

This machine has one device, so every block goes to "cpu", but through accelerate's dispatch_model with
its hooks in the path, the code path a model spread over GPUs takes. A device map that leaves a layer
out, and maps that are not maps, are refused by name.
"""
import pytest
import torch

from synapse_core.arch.spec import HeadMask, Intervention
from synapse_core.common.errors import ModelLoadError
from synapse_core.hooks.masking import mask_fns, merge_fns
from synapse_core.interventions import ops
from synapse_core.interventions.ops import OpSettings, forward_last, prepare
from synapse_core.interventions.sweep import batched_scores
from synapse_core.interventions.metrics import resolve_target
from synapse_core.model import placement
from synapse_core.model.loading import prepare as prepare_model

TOL = 1e-5


def per_layer_map(model) -> dict:
    """Every module of a Llama-like model named on its own line, as a hand-written map would be."""
    layers = {f"model.layers.{i}": "cpu" for i in range(model.config.num_hidden_layers)}
    return {"model.embed_tokens": "cpu", **layers, "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.fixture
def pair(tiny):
    """The same tiny Llama twice: plainly prepared, and dispatched through accelerate by a device map."""
    plain = tiny.make_handle("llama", seed=3)
    model = tiny.make_model("llama", seed=3)
    mapped = prepare_model(model, tiny.make_tokenizer(), name="tiny-llama", device_map=per_layer_map(model))
    return plain, mapped


def test_a_mapped_model_runs_through_accelerate_hooks(pair):
    from accelerate.hooks import AlignDevicesHook

    plain, mapped = pair
    blocks = mapped.arch.layers
    assert all(isinstance(getattr(b, "_hf_hook", None), AlignDevicesHook) for b in blocks)
    assert not hasattr(plain.arch.layers[0], "_hf_hook")
    assert mapped.device == torch.device("cpu") and mapped.device_map["model.layers.1"] == "cpu"
    assert mapped.fingerprint == plain.fingerprint


INTERVENTIONS = [
    [Intervention(0, "attn.head", "zero", head=1)],
    [Intervention(1, "attn.head", "mean", head=2)],
    [Intervention(1, "mlp", "patch", positions="last", source="the dog ran")],
    [Intervention(0, "resid", "steer")],
    [Intervention(0, "attn", "zero", positions=(0, 2))],
]


@pytest.mark.parametrize("ivs", INTERVENTIONS, ids=lambda ivs: ivs[0].name + "." + ivs[0].op)
def test_masked_and_ablated_logits_equal_the_plain_model(pair, ivs):
    plain, mapped = pair
    masks = (HeadMask(0, 3, "projection"), HeadMask(1, 0, "attention"))
    settings = OpSettings(reference=("the cat sat on the mat", "a bird flew over the sea today"),
                          steer_prompts=("happy sun", "sad rain"), scale=2.0)
    outs = []
    for handle in (plain, mapped):
        ids = torch.tensor([[2, 5, 9, 14, 3, 7, 22]], device=handle.device)
        table = merge_fns(mask_fns(masks), prepare(handle, ids, ivs, settings, masks).table())
        outs.append((forward_last(handle, ids, mask_fns(masks)), forward_last(handle, ids, table)))
    (clean_a, hit_a), (clean_b, hit_b) = outs
    assert (hit_a - clean_a).abs().max() > 1e-3  # the intervention does something
    torch.testing.assert_close(clean_b, clean_a, atol=TOL, rtol=0)
    torch.testing.assert_close(hit_b, hit_a, atol=TOL, rtol=0)


def test_a_batched_head_sweep_equals_the_plain_model(pair):
    plain, mapped = pair
    scores = []
    for handle in (plain, mapped):
        ids = torch.tensor([[2, 5, 9, 14, 3, 7]], device=handle.device)
        ivs = [Intervention(layer, "attn.head", "zero", head=h) for layer in range(2) for h in range(4)]
        target = resolve_target(handle, "cat", "dog")
        scores.append(batched_scores(handle, ids, prepare(handle, ids, ivs), target, batch_rows=3)[0])
    assert scores[0]["logit_diff"].abs().max() > 0
    for key in ("logit_diff", "log_prob", "kl"):
        torch.testing.assert_close(scores[1][key], scores[0][key], atol=TOL, rtol=0)


def test_spread_models_keep_the_last_position_by_count(pair, monkeypatch):
    """Over several devices forward_last keeps the last position by count, not by an index tensor
    (which accelerate would move to the first device); the logits are the same."""
    plain, mapped = pair
    ids = torch.tensor([[2, 5, 9, 14]])
    expected = forward_last(plain, ids, {})
    monkeypatch.setattr(ops, "spread", lambda model: True)
    torch.testing.assert_close(forward_last(mapped, ids, {}), expected, atol=TOL, rtol=0)


def test_named_maps_on_a_cpu_machine_place_everything_on_the_cpu(tiny):
    model = tiny.make_model("llama")
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine auto spreads over the GPUs")
    for name in ("auto", "balanced"):
        assert set(placement.plan(model, name).values()) == {"cpu"}


def test_a_map_that_leaves_layers_out_names_them(tiny):
    model = tiny.make_model("llama")
    partial = {k: v for k, v in per_layer_map(model).items() if k not in ("model.layers.1", "lm_head")}
    with pytest.raises(ModelLoadError, match=r"no device for lm_head, model\.layers\.1 ") as err:
        prepare_model(model, tiny.make_tokenizer(), name="x", device_map=partial)
    assert "model.layers.0" not in str(err.value)


@pytest.mark.parametrize("text, match", [
    ("everywhere", "'everywhere': use auto, balanced"),
    ('{"model.layers.0": ', "is not valid JSON"),
    ("[1, 2]", "'\\[1, 2\\]': use auto"),
    ('{"lm_head": "disk"}', "'lm_head' -> 'disk': disk and meta offload are not supported"),
    ('{"lm_head": "gpu7"}', "'lm_head' -> 'gpu7' is not a device"),
    ('{"lm_head": true}', "'lm_head' -> True is not a device"),
])
def test_bad_maps_are_refused_by_name(text, match):
    with pytest.raises(ModelLoadError, match=match):
        placement.parse_device_map(text)


def test_a_map_naming_a_missing_gpu_is_refused(tiny):
    model = tiny.make_model("llama")
    wanted = dict(per_layer_map(model), **{"model.layers.1": 7})
    n = torch.cuda.device_count()
    with pytest.raises(ModelLoadError, match="'model.layers.1' -> 7" + (", but this machine has no CUDA GPU"
                                                                         if n == 0 else " does not exist")):
        placement.plan(model, wanted)


def test_parse_device_map_reads_names_and_json():
    assert placement.parse_device_map(None) is None and placement.parse_device_map("  ") is None
    assert placement.parse_device_map("balanced") == "balanced"
    assert placement.parse_device_map('{"": "cpu", "lm_head": 1}') == {"": "cpu", "lm_head": 1}


def test_cpu_beside_gpus_is_refused_as_offload(tiny, monkeypatch):
    model = tiny.make_model("llama")
    monkeypatch.setattr(placement, "_check_device_exists", lambda module, device: None)  # pretend GPU 0 exists
    wanted = dict(per_layer_map(model), **{"model.layers.0": 0})
    with pytest.raises(ModelLoadError, match="puts lm_head, model.embed_tokens, model.layers.1.* on cpu beside GPUs"):
        placement.plan(model, wanted)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ablation_models import tiny_handle

    folder = tmp_path_factory.mktemp("tiny-llama-map")
    handle = tiny_handle("llama")
    handle.model.save_pretrained(folder)
    handle.tokenizer.save_pretrained(folder)
    return str(folder)


def test_cli_device_map_flag_and_setting(model_dir, capsys, monkeypatch, tmp_path):
    import json

    from ablation_models import PROMPT

    from synapse_core.cli.main import main

    argv = ["ablate", "--model", model_dir, "--prompt", PROMPT, "--target", "Paris", "--contrast", "London",
            "--heads", "0.1,1.2", "--json", "--no-masks"]
    runs = []
    for i, (extra, env) in enumerate((([], None), (["--device-map", '{"": "cpu"}'], None), ([], "balanced"))):
        monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path / str(i)))  # a fresh store: each run computes
        if env:
            monkeypatch.setenv("SYNAPSE_DEVICE_MAP", env)
        assert main(argv + extra) == 0
        out, err = capsys.readouterr()
        assert "answered from the store" not in err
        runs.append(json.loads(out))
    effects = [r["ablated"]["logit_diff"] - r["clean"]["logit_diff"] for r in runs]
    assert abs(effects[0]) > 1e-3
    assert effects[1] == pytest.approx(effects[0], abs=TOL) and effects[2] == pytest.approx(effects[0], abs=TOL)
    assert main(argv + ["--device-map", '{"model.layers.0": "cpu"}']) == 2
    assert "no device for lm_head, model.embed_tokens, model.layers.1" in capsys.readouterr().err
