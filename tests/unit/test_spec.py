"""Names of heads and interventions: one spec, one stable name."""
import pytest

from synapse_core.arch.spec import HeadMask, HeadRef, Intervention, normalize_masks, parse_head, parse_heads
from synapse_core.common.errors import BadInput


@pytest.mark.parametrize("text, expected", [
    ("3.1", HeadRef(3, 1)),
    ("23.3", HeadRef(23, 3)),
    (" 3.1 ", HeadRef(3, 1)),
    ("layers.3.attn.head.1", HeadRef(3, 1)),
    ("3:1", HeadRef(3, 1)),
])
def test_parse_head_accepts(text, expected):
    assert parse_head(text) == expected


@pytest.mark.parametrize("text", ["3", "a.b", "", "3.", ".1", "3.1.2", "layers.3", "3.x", "L3.H1"])
def test_parse_head_rejects_with_the_text(text):
    with pytest.raises(BadInput, match=repr(text).replace(".", r"\.")):
        parse_head(text)


def test_names_round_trip():
    ref = HeadRef(23, 3)
    assert ref.name == "layers.23.attn.head.3"
    assert ref.short == "23.3"
    assert parse_head(ref.name) == parse_head(ref.short) == ref


def test_parse_heads():
    assert parse_heads("3.1, 5.7") == [HeadRef(3, 1), HeadRef(5, 7)]
    assert parse_heads("3.1 layers.5.attn.head.7,0.0") == [HeadRef(3, 1), HeadRef(5, 7), HeadRef(0, 0)]
    assert parse_heads("") == [] and parse_heads(None) == [] and parse_heads("  ") == []
    with pytest.raises(BadInput, match="'3'"):
        parse_heads("3.1, 3")
    with pytest.raises(BadInput, match="'a.b'"):
        parse_heads("a.b 3.1")


def test_head_mask_level_is_checked():
    assert HeadMask(1, 2).level == "projection"
    with pytest.raises(BadInput, match="'everything'"):
        HeadMask(1, 2, "everything")


def test_normalize_masks(tiny):
    arch = tiny.make_handle("llama").arch
    masks = normalize_masks(["1.2", HeadRef(0, 3), HeadMask(1, 2), HeadMask(0, 1, "attention"), "1.2"], arch)
    assert masks == (HeadMask(0, 1, "attention"), HeadMask(0, 3), HeadMask(1, 2))
    assert normalize_masks(None, arch) == ()
    with pytest.raises(BadInput, match="head 4 does not exist"):
        normalize_masks(["0.4"], arch)
    with pytest.raises(BadInput, match="layer 9 does not exist"):
        normalize_masks([HeadMask(9, 0)], arch)


@pytest.mark.parametrize("intervention, name", [
    (Intervention(23, "attn.head", head=3), "layers.23.attn.head.3"),
    (Intervention(4, "mlp"), "layers.4.mlp"),
    (Intervention(0, "attn", op="mean"), "layers.0.attn"),
    (Intervention(7, "resid", op="steer", source="toward French"), "layers.7.resid"),
    (Intervention(2, "attn.head", op="patch", head=0, positions="last", source="a dog"), "layers.2.attn.head.0"),
])
def test_intervention_names(intervention, name):
    assert intervention.name == name


def test_a_head_intervention_and_its_head_ref_share_a_name():
    assert Intervention(5, "attn.head", head=2).name == HeadRef(5, 2).name


@pytest.mark.parametrize("kwargs, message", [
    (dict(layer=1, site="attn.q"), "'attn.q'"),
    (dict(layer=1, site="mlp", op="delete"), "'delete'"),
    (dict(layer=1, site="attn.head"), "head is given exactly"),
    (dict(layer=1, site="mlp", head=2), "head is given exactly"),
])
def test_intervention_rejects(kwargs, message):
    with pytest.raises(BadInput, match=message):
        Intervention(**kwargs)


def test_intervention_check(tiny):
    arch = tiny.make_handle("llama").arch
    assert Intervention(1, "mlp").check(arch).layer == 1
    with pytest.raises(BadInput, match="layer 2 does not exist"):
        Intervention(2, "mlp").check(arch)
    with pytest.raises(BadInput, match="head 4 does not exist"):
        Intervention(1, "attn.head", head=4).check(arch)
