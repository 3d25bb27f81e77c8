"""Tests of ``nasbert.space``: shipped spaces, path counting, sampling, architectures, validation, costs."""

from __future__ import annotations

import copy
import json
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from nasbert.space import OPS, Arch, BlockArch, SearchSpace, SpaceError, op_flops, op_params

# ---------------------------------------------------------------------------------------------------- helpers


def _small_space_dict(ops=("mha", "ffn", "identity")) -> dict:
    """A 2-layer, 16-wide teacher: 4 slots in 2 blocks of 2, one width. With [mha, ffn, identity] a block has
    1 (no layer) + 2 (one layer) + 4 (two layers) = 7 paths."""
    return {
        "name": "small",
        "teacher": {
            "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "vocab_size": 10, "max_position_embeddings": 8, "type_vocab_size": 2,
        },
        "num_blocks": 2,
        "hidden_choices": [16],
        "ops": list(ops),
        "head_size": 8,
        "ffn_ratio": 4,
    }


def _arch_with(space: SearchSpace, block: int, path: BlockArch) -> Arch:
    """``path`` at ``block``, the largest arch's block elsewhere."""
    filler = space.largest_arch().blocks
    return Arch(tuple(path if n == block else filler[n] for n in range(space.num_blocks)))


def _write_yaml(tmp_path, data, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


# ---------------------------------------------------------------------------------------------------- shipped spaces


def test_shipped_spaces_all_load():
    names = SearchSpace.shipped()
    assert {"bert_base", "minilm_l6", "tiny"} <= set(names)
    assert names == sorted(names)
    for name in names:
        space = SearchSpace.load(name)
        assert space.name == name
        assert space.num_slots == 2 * space.teacher.num_hidden_layers
        assert space.slots_per_block * space.num_blocks == space.num_slots


def test_bert_base_structure():
    space = SearchSpace.load("bert_base")
    assert space.num_slots == 24
    assert space.num_blocks == 4
    assert space.slots_per_block == 6
    assert space.layers_per_block == 3
    assert space.hidden_choices == (128, 192, 256, 384, 512)
    assert space.head_size == 64
    assert space.ffn_ratio == 4
    assert space.teacher.hidden_size == 768
    assert space.teacher.name == "bert-base-uncased"
    assert space.ops == OPS
    assert space.teacher_boundaries == (3, 6, 9, 12)
    assert list(space.block_slots(2)) == [12, 13, 14, 15, 16, 17]


def test_minilm_l6_structure():
    space = SearchSpace.load("minilm_l6")
    assert space.num_slots == 12
    assert space.num_blocks == 3
    assert space.slots_per_block == 4
    assert space.hidden_choices == (128, 192, 256, 384)
    assert space.head_size == 32
    assert space.teacher.hidden_size == 384
    assert space.teacher.intermediate_size == 1536
    assert space.teacher.name is None
    assert space.teacher_boundaries == (2, 4, 6)


def test_tiny_structure(tiny_space):
    assert tiny_space.num_slots == 8
    assert tiny_space.num_blocks == 2
    assert tiny_space.slots_per_block == 4
    assert tiny_space.hidden_choices == (16, 24, 32)
    assert tiny_space.head_size == 8


# ---------------------------------------------------------------------------------------------------- path counts


def test_num_paths_matches_enumeration_on_tiny(tiny_space):
    k = tiny_space.slots_per_block
    closed_form = len(tiny_space.hidden_choices) * sum(5**j for j in range(k + 1))
    assert closed_form == 3 * 781 == 2343
    for block in range(tiny_space.num_blocks):
        paths = list(tiny_space.iter_block_paths(block))
        assert len(paths) == tiny_space.num_paths(block) == closed_form
        assert len(set(paths)) == len(paths), "enumerated paths must be distinct"
        for path in paths:
            assert len(path.ops) == k
            tiny_space.validate(_arch_with(tiny_space, block, path))


@pytest.mark.parametrize(
    "name, per_block",
    [("bert_base", 5 * sum(5**j for j in range(7))), ("minilm_l6", 4 * sum(5**j for j in range(5)))],
)
def test_num_paths_closed_form(name, per_block):
    space = SearchSpace.load(name)
    for block in range(space.num_blocks):
        assert space.num_paths(block) == per_block
    assert {"bert_base": 97_655, "minilm_l6": 3_124}[name] == per_block


def test_num_paths_without_identity():
    space = SearchSpace.from_dict(_small_space_dict(ops=("mha", "ffn")))
    # no identity: every slot holds a layer, 2 ops ** 2 slots
    assert space.num_paths(0) == 4
    paths = list(space.iter_block_paths(1))
    assert len(paths) == 4 and len(set(paths)) == 4
    assert all("identity" not in p.ops for p in paths)


def test_small_space_has_seven_paths():
    space = SearchSpace.from_dict(_small_space_dict())
    paths = list(space.iter_block_paths(0))
    assert space.num_paths(0) == len(paths) == 7
    assert {str(p) for p in paths} == {
        "16:identity,identity",
        "16:mha,identity", "16:ffn,identity",
        "16:mha,mha", "16:mha,ffn", "16:ffn,mha", "16:ffn,ffn",
    }


def test_block_index_out_of_range(tiny_space):
    rng = np.random.default_rng(0)
    for bad in (-1, tiny_space.num_blocks):
        with pytest.raises(IndexError, match="out of range"):
            tiny_space.num_paths(bad)
        with pytest.raises(IndexError, match="out of range"):
            list(tiny_space.iter_block_paths(bad))
        with pytest.raises(IndexError, match="out of range"):
            tiny_space.sample_block(bad, rng)


# ---------------------------------------------------------------------------------------------------- sampling


def test_sample_is_deterministic_per_seed(tiny_space):
    a = [tiny_space.sample(np.random.default_rng(123)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    assert [tiny_space.sample(rng1) for _ in range(20)] == [tiny_space.sample(rng2) for _ in range(20)]
    # different seeds give different streams
    draws = {str(tiny_space.sample(np.random.default_rng(seed))) for seed in range(20)}
    assert len(draws) > 15


def test_sample_requires_generator(tiny_space):
    with pytest.raises(TypeError, match="Generator"):
        tiny_space.sample(0)


@pytest.mark.parametrize("name", ["tiny", "minilm_l6", "bert_base"])
def test_samples_are_valid_with_identities_at_block_ends(name):
    space = SearchSpace.load(name)
    rng = np.random.default_rng(1)
    saw_identity = False
    for _ in range(300):
        arch = space.sample(rng)
        space.validate(arch)
        assert space.contains(arch)
        for block in arch.blocks:
            assert block.width in space.hidden_choices
            assert len(block.ops) == space.slots_per_block
            n_layers = len(block.layers)
            assert block.ops[:n_layers] == block.layers
            assert all(op == "identity" for op in block.ops[n_layers:])
            saw_identity |= n_layers < space.slots_per_block
    assert saw_identity


def test_sample_is_uniform_over_paths():
    space = SearchSpace.from_dict(_small_space_dict())
    rng = np.random.default_rng(2024)
    n_draws = 7000
    counts = Counter()
    for _ in range(n_draws // space.num_blocks):
        arch = space.sample(rng)
        counts.update(str(b) for b in arch.blocks)
    total = sum(counts.values())
    assert total == n_draws
    expected_paths = {str(p) for p in space.iter_block_paths(0)}
    assert set(counts) == expected_paths
    expected = total / 7
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 22.46, (chi2, counts)  # chi-square, 6 degrees of freedom, p = 0.001
    for path, c in counts.items():
        assert abs(c / total - 1 / 7) < 0.03, (path, c / total)


def test_sample_block_length_and_width_distribution_on_tiny(tiny_space):
    # uniform over 2343 paths: a path with j layers has probability 5**j / 781, widths are uniform
    rng = np.random.default_rng(5)
    n = 20000
    blocks = [tiny_space.sample_block(1, rng) for _ in range(n)]
    lengths = Counter(len(b.layers) for b in blocks)
    for j in range(5):
        p = 5**j / 781
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(lengths[j] / n - p) < 5 * sigma + 1e-4, (j, lengths[j] / n, p)
    widths = Counter(b.width for b in blocks)
    for w in tiny_space.hidden_choices:
        assert abs(widths[w] / n - 1 / 3) < 0.02
    ops = Counter(op for b in blocks for op in b.layers)
    for op in ("mha", "ffn", "sepconv3", "sepconv5", "sepconv7"):
        assert abs(ops[op] / sum(ops.values()) - 0.2) < 0.02


# ---------------------------------------------------------------------------------------------------- Arch


def test_arch_round_trips(tiny_space):
    rng = np.random.default_rng(3)
    for _ in range(50):
        arch = tiny_space.sample(rng)
        assert Arch.from_json(arch.to_json()) == arch
        assert Arch.parse(str(arch)) == arch
        assert Arch.parse(arch.to_json()) == arch
        assert Arch.from_dict(json.loads(arch.to_json())) == arch


def test_arch_str_and_properties():
    arch = Arch.parse(" 16:mha, sepconv3 ,identity,identity|24:ffn,identity,identity,identity ")
    assert str(arch) == "16:mha,sepconv3,identity,identity|24:ffn,identity,identity,identity"
    assert arch.widths == (16, 24)
    assert arch.num_layers == 3
    assert arch.blocks[0].layers == ("mha", "sepconv3")
    assert arch.to_dict() == {"blocks": [
        {"width": 16, "ops": ["mha", "sepconv3", "identity", "identity"]},
        {"width": 24, "ops": ["ffn", "identity", "identity", "identity"]},
    ]}
    # lists are turned into tuples, so archs hash and compare by value
    assert BlockArch(16, ["mha"]) == BlockArch(16, ("mha",))
    assert hash(Arch([BlockArch(16, ["mha"])])) == hash(Arch((BlockArch(16, ("mha",)),)))


@pytest.mark.parametrize(
    "data, match",
    [
        ({"blocks": [{"width": 16, "ops": ["mha"]}], "extra": 1}, "single key 'blocks'"),
        ({"block": []}, "single key 'blocks'"),
        ([{"width": 16, "ops": ["mha"]}], "single key 'blocks'"),
        ({"blocks": [{"width": 16}]}, r"blocks\[0\] must have exactly the keys"),
        ({"blocks": [{"width": 16, "ops": ["mha"], "x": 1}]}, r"blocks\[0\] must have exactly the keys"),
        ({"blocks": [{"width": 16, "ops": ["mha"]}, "16:mha"]}, r"blocks\[1\] must have exactly the keys"),
        ({"blocks": [{"width": "16", "ops": ["mha"]}]}, r"blocks\[0\]\.width must be an integer"),
        ({"blocks": [{"width": 16.0, "ops": ["mha"]}]}, r"blocks\[0\]\.width must be an integer"),
        ({"blocks": [{"width": True, "ops": ["mha"]}]}, r"blocks\[0\]\.width must be an integer"),
        ({"blocks": [{"width": 16, "ops": "mha,ffn"}]}, r"blocks\[0\]\.ops must be a list"),
        ({"blocks": [{"width": 16, "ops": ["mha", 3]}]}, r"blocks\[0\]\.ops must be a list"),
    ],
)
def test_arch_from_dict_rejects_malformed(data, match):
    with pytest.raises(SpaceError, match=match):
        Arch.from_dict(data)


# BUG (nasbert/space.py, Arch.from_dict, the loop `for i, block in enumerate(data["blocks"])`): when "blocks"
# is not a list (e.g. an integer) the loop raises TypeError ("'int' object is not iterable") instead of a
# SpaceError, so `nasbert extract --arch '{"blocks": 5}'` dies with a traceback instead of exit code 1.
def test_arch_from_dict_rejects_non_list_blocks():
    with pytest.raises(SpaceError, match="blocks"):
        Arch.from_dict({"blocks": 5})


@pytest.mark.parametrize(
    "text, match",
    [
        ("16mha,ffn", "block 0 of '16mha,ffn' is not of the form WIDTH:op"),
        ("x:mha,ffn", "is not of the form WIDTH:op"),
        ("16:mha|ffn", "block 1 of '16:mha|ffn' is not of the form"),
        ("-16:mha", "is not of the form"),
        ("", "is not of the form"),
        ('{"blocks": [{"width": 16}]}', r"blocks\[0\] must have exactly the keys"),
        ("[1, 2]", "is not of the form"),
    ],
)
def test_arch_parse_rejects_malformed(text, match):
    with pytest.raises(SpaceError, match=match):
        Arch.parse(text)


# BUG (nasbert/space.py, Arch.parse -> Arch.from_json -> json.loads): a string that starts with "{" but is not
# valid JSON raises json.JSONDecodeError, not SpaceError; the CLI (nasbert/cli.py main) only catches SpaceError,
# so `nasbert extract --arch '{bad'` dies with a traceback instead of "nasbert: error: ..." and exit code 1.
def test_arch_parse_rejects_invalid_json():
    with pytest.raises(SpaceError):
        Arch.parse('{"blocks": [')


# ---------------------------------------------------------------------------------------------------- validate


def test_validate_rejects_wrong_block_count(tiny_space):
    arch = Arch.parse("16:mha,ffn,identity,identity")
    with pytest.raises(SpaceError, match="arch has 1 blocks, space 'tiny' has 2"):
        tiny_space.validate(arch)
    arch3 = Arch.parse("|".join(["16:mha,ffn,identity,identity"] * 3))
    with pytest.raises(SpaceError, match="arch has 3 blocks"):
        tiny_space.validate(arch3)
    assert not tiny_space.contains(arch3)


def test_validate_rejects_width_not_in_choices(tiny_space):
    arch = Arch.parse("16:mha,ffn,identity,identity|20:mha,ffn,identity,identity")
    with pytest.raises(SpaceError, match=r"block 1: width 20 is not in hidden_choices \[16, 24, 32\]"):
        tiny_space.validate(arch)
    with pytest.raises(SpaceError, match="width 20"):
        tiny_space.validate(arch, allow_teacher=True)


def test_validate_teacher_width_only_with_allow_teacher():
    space = SearchSpace.load("bert_base")
    teacher = space.teacher_arch()
    assert teacher.widths == (768, 768, 768, 768)
    assert teacher.blocks[0].ops == ("mha", "ffn", "mha", "ffn", "mha", "ffn")
    with pytest.raises(SpaceError, match=r"width 768 is not in hidden_choices \[128, 192, 256, 384, 512\]"):
        space.validate(teacher)
    assert not space.contains(teacher)
    space.validate(teacher, allow_teacher=True)
    # the largest arch is at the widest choice, not the teacher's width
    assert space.largest_arch().widths == (512,) * 4
    space.validate(space.largest_arch())


def test_validate_rejects_wrong_number_of_ops(tiny_space):
    arch = Arch.parse("16:mha,ffn,identity|16:mha,ffn,identity,identity")
    with pytest.raises(SpaceError, match="block 0: has 3 ops, each block has 4 slots"):
        tiny_space.validate(arch)
    arch = Arch.parse("16:mha,ffn,identity,identity|16:mha,ffn,identity,identity,identity")
    with pytest.raises(SpaceError, match="block 1: has 5 ops"):
        tiny_space.validate(arch)


def test_validate_rejects_unknown_op(tiny_space):
    arch = Arch.parse("16:mha,conv9,identity,identity|16:mha,ffn,identity,identity")
    with pytest.raises(SpaceError, match="block 0: op 'conv9' is not in this space's ops"):
        tiny_space.validate(arch)


def test_a_pruned_ffn_belongs_to_every_space_with_ffn(tiny_space):
    assert op_params("ffn40", 24, ffn_ratio=4) == (24 * 40 + 40) + (40 * 24 + 24) + 2 * 24
    assert op_flops("ffn40", 24, 10, ffn_ratio=4) == 2 * (2 * 10 * 24 * 40)
    tiny_space.validate(Arch.parse("24:mha,ffn40,identity,identity|16:ffn1,identity,identity,identity"))
    for op, width in (("ffn96", 24), ("ffn100", 24)):  # as many units as the ffn (or more) is no pruning
        arch = Arch.parse(f"{width}:mha,{op},identity,identity|16:ffn,identity,identity,identity")
        with pytest.raises(SpaceError, match=f"block 0: {op} keeps .* an ffn of width 24 has 96"):
            tiny_space.validate(arch)
    from nasbert.modeling import NasBertConfig

    with pytest.raises(ValueError, match="ffn100 keeps 100 inner units, but an ffn layer of width 24 has 96"):
        NasBertConfig(blocks=[{"width": 24, "ops": ["ffn100"]}], hidden_size=32, head_size=8)
    data = _small_space_dict()
    data["ops"] = ["mha", "sepconv3", "identity"]
    with pytest.raises(SpaceError, match="op 'ffn8' is not in this space's ops"):
        SearchSpace.from_dict(data).validate(Arch.parse("16:mha,ffn8|16:mha,identity"))
    data["ops"] = ["mha", "ffn768", "identity"]  # a space lists ffn; its pruned versions come with it
    with pytest.raises(SpaceError, match="unknown op 'ffn768'.*no op of its own: list 'ffn'"):
        SearchSpace.from_dict(data)


def test_validate_rejects_op_outside_restricted_space():
    space = SearchSpace.from_dict(_small_space_dict())  # ops: mha, ffn, identity
    arch = Arch.parse("16:mha,sepconv3|16:ffn,identity")
    with pytest.raises(SpaceError, match="op 'sepconv3' is not in this space's ops"):
        space.validate(arch)


def test_validate_rejects_identity_before_layer(tiny_space):
    arch = Arch.parse("16:mha,identity,ffn,identity|16:mha,ffn,identity,identity")
    with pytest.raises(SpaceError, match="block 0: identity ops must come last"):
        tiny_space.validate(arch)
    arch = Arch.parse("16:mha,ffn,identity,identity|16:identity,ffn,ffn,ffn")
    with pytest.raises(SpaceError, match="block 1: identity ops must come last"):
        tiny_space.validate(arch)
    # an all-identity block is a valid (empty) path
    tiny_space.validate(Arch.parse("16:identity,identity,identity,identity|32:mha,ffn,mha,ffn"))


def test_validate_rejects_non_arch(tiny_space):
    with pytest.raises(TypeError, match="expected an Arch"):
        tiny_space.validate("16:mha,ffn,identity,identity|16:mha,ffn,identity,identity")


def test_largest_smallest_teacher_archs_tiny(tiny_space):
    assert str(tiny_space.largest_arch()) == "32:mha,ffn,mha,ffn|32:mha,ffn,mha,ffn"
    # cheapest op at width 16: sepconv3 (16*3 + 16 + 16*16 + 16 + 32 = 368) < mha (1120), ffn (2160)
    assert str(tiny_space.smallest_arch()) == "16:sepconv3,identity,identity,identity|" \
                                              "16:sepconv3,identity,identity,identity"
    assert tiny_space.teacher_arch() == tiny_space.largest_arch()  # hidden_choices includes the teacher's 32
    for arch in (tiny_space.largest_arch(), tiny_space.smallest_arch(), tiny_space.teacher_arch()):
        tiny_space.validate(arch)


# ---------------------------------------------------------------------------------------------------- invalid YAMLs


@pytest.fixture
def tiny_dict(tiny_space):
    return copy.deepcopy(tiny_space.to_dict())


def _load_error(tmp_path, data, match):
    path = _write_yaml(tmp_path, data)
    with pytest.raises(SpaceError, match=match) as info:
        SearchSpace.load(path)
    assert str(path) in str(info.value), "the error names the file"
    return str(info.value)


def test_yaml_valid_copy_loads(tmp_path, tiny_dict, tiny_space):
    path = _write_yaml(tmp_path, tiny_dict)
    assert SearchSpace.load(path) == tiny_space
    assert SearchSpace.load(str(path)) == tiny_space
    # a .yml path works too
    path2 = _write_yaml(tmp_path, tiny_dict, "other.yml")
    assert SearchSpace.load(path2) == tiny_space


def test_yaml_unknown_top_level_key(tmp_path, tiny_dict):
    tiny_dict["widths"] = [16]
    _load_error(tmp_path, tiny_dict, "unknown key 'widths'")


def test_yaml_unknown_teacher_key(tmp_path, tiny_dict):
    tiny_dict["teacher"]["hidden"] = 32
    _load_error(tmp_path, tiny_dict, "unknown key 'teacher.hidden'")


@pytest.mark.parametrize("key", ["name", "teacher", "num_blocks", "hidden_choices"])
def test_yaml_missing_required_key(tmp_path, tiny_dict, key):
    del tiny_dict[key]
    _load_error(tmp_path, tiny_dict, f"missing required key '{key}'")


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "vocab_size", "type_vocab_size"])
def test_yaml_missing_teacher_key(tmp_path, tiny_dict, key):
    del tiny_dict["teacher"][key]
    _load_error(tmp_path, tiny_dict, f"missing required key 'teacher.{key}'")


def test_yaml_teacher_not_mapping(tmp_path, tiny_dict):
    tiny_dict["teacher"] = "bert-base-uncased"
    _load_error(tmp_path, tiny_dict, "'teacher' must be a mapping")


def test_yaml_teacher_name_not_string(tmp_path, tiny_dict):
    tiny_dict["teacher"]["name"] = 5
    _load_error(tmp_path, tiny_dict, "'teacher.name' must be a string or null")


def test_yaml_width_above_teacher(tmp_path, tiny_dict):
    tiny_dict["hidden_choices"] = [16, 24, 32, 40]
    message = _load_error(tmp_path, tiny_dict, "'hidden_choices' has 40, wider than 'teacher.hidden_size' = 32")
    assert "hidden_choices" in message


def test_yaml_num_blocks_not_dividing_layers(tmp_path, tiny_dict):
    tiny_dict["num_blocks"] = 3
    _load_error(tmp_path, tiny_dict, r"'num_blocks' = 3 does not divide 'teacher.num_hidden_layers' = 4")


def test_yaml_width_not_multiple_of_head_size(tmp_path, tiny_dict):
    tiny_dict["hidden_choices"] = [12, 16, 32]
    _load_error(tmp_path, tiny_dict, r"'hidden_choices' has 12, not a multiple of 'head_size' = 8")


def test_yaml_width_need_not_be_multiple_of_head_size_without_mha(tmp_path, tiny_dict, tiny_space):
    tiny_dict["hidden_choices"] = [12, 16, 32]
    tiny_dict["ops"] = ["ffn", "sepconv3", "identity"]
    space = SearchSpace.load(_write_yaml(tmp_path, tiny_dict))
    assert space.hidden_choices == (12, 16, 32)
    assert space.num_paths(0) == 3 * sum(2**j for j in range(5))


def test_yaml_head_size_inconsistent_with_teacher(tmp_path, tiny_dict):
    tiny_dict["hidden_choices"] = [16, 32]
    tiny_dict["head_size"] = 16
    _load_error(tmp_path, tiny_dict, r"'head_size' = 16 but the teacher's heads are 32/4 wide")


def test_yaml_ffn_ratio_inconsistent_with_teacher(tmp_path, tiny_dict):
    tiny_dict["ffn_ratio"] = 2
    _load_error(tmp_path, tiny_dict, r"'ffn_ratio' = 2 gives an FFN of 64 .*'teacher.intermediate_size' = 128")


def test_yaml_unknown_op(tmp_path, tiny_dict):
    tiny_dict["ops"] = ["mha", "ffn", "conv9", "identity"]
    _load_error(tmp_path, tiny_dict, "'ops' has unknown op 'conv9'")


@pytest.mark.parametrize(
    "ops, match",
    [
        (["mha", "mha", "identity"], "'ops' lists an op twice"),
        (["identity"], "at least one op other than identity"),
        ([], "'ops' must be a non-empty list"),
        ("mha", "'ops' must be a non-empty list"),
        (["mha", 3], "'ops' must be a non-empty list"),
    ],
)
def test_yaml_bad_ops(tmp_path, tiny_dict, ops, match):
    tiny_dict["ops"] = ops
    _load_error(tmp_path, tiny_dict, match)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(num_blocks="two"), "'num_blocks' must be a positive integer, got 'two'"),
        (lambda d: d.update(num_blocks=2.0), "'num_blocks' must be a positive integer, got 2.0"),
        (lambda d: d.update(num_blocks=True), "'num_blocks' must be a positive integer, got True"),
        (lambda d: d.update(num_blocks=0), "'num_blocks' must be a positive integer, got 0"),
        (lambda d: d.update(head_size=8.5), "'head_size' must be a positive integer"),
        (lambda d: d.update(ffn_ratio="4"), "'ffn_ratio' must be a positive integer"),
        (lambda d: d["teacher"].update(hidden_size="32"), "'teacher.hidden_size' must be a positive integer"),
        (lambda d: d["teacher"].update(vocab_size=-1), "'teacher.vocab_size' must be a positive integer"),
        (lambda d: d["teacher"].update(num_hidden_layers=4.0), "'teacher.num_hidden_layers' must be a positive"),
        (lambda d: d.update(hidden_choices=[16, "24", 32]), "'hidden_choices' must hold positive integers, got '24'"),
        (lambda d: d.update(hidden_choices=[16, 24.0, 32]), "'hidden_choices' must hold positive integers"),
        (lambda d: d.update(hidden_choices=[0, 16]), "'hidden_choices' must hold positive integers, got 0"),
        (lambda d: d.update(hidden_choices=[]), "'hidden_choices' must be a non-empty list"),
        (lambda d: d.update(hidden_choices=16), "'hidden_choices' must be a non-empty list"),
    ],
)
def test_yaml_non_integer_values(tmp_path, tiny_dict, mutate, match):
    mutate(tiny_dict)
    _load_error(tmp_path, tiny_dict, match)


def test_yaml_unsorted_hidden_choices(tmp_path, tiny_dict):
    tiny_dict["hidden_choices"] = [24, 16, 32]
    _load_error(tmp_path, tiny_dict, "'hidden_choices' must be in increasing order")


def test_yaml_duplicate_hidden_choices(tmp_path, tiny_dict):
    tiny_dict["hidden_choices"] = [16, 16, 32]
    _load_error(tmp_path, tiny_dict, "'hidden_choices' lists a width twice")


@pytest.mark.parametrize(
    "text, match",
    [
        ("- tiny\n- small\n", "expected a mapping of keys, got list"),
        ("just a string\n", "expected a mapping of keys, got str"),
        ("", "expected a mapping of keys, got NoneType"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_yaml_not_a_mapping(tmp_path, text, match):
    _load_error(tmp_path, text, match)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpaceError, match=r"search space file .*nope\.yaml' does not exist"):
        SearchSpace.load(missing)
    with pytest.raises(SpaceError, match="does not exist"):
        SearchSpace.load(str(tmp_path / "sub" / "nope.yml"))


def test_unknown_shipped_name():
    with pytest.raises(SpaceError, match="unknown search space 'bert_huge'") as info:
        SearchSpace.load("bert_huge")
    for name in ("bert_base", "minilm_l6", "tiny"):
        assert name in str(info.value)


def test_from_dict_rejects_non_mapping():
    with pytest.raises(SpaceError, match="expected a mapping of keys, got list"):
        SearchSpace.from_dict([1, 2])


# ---------------------------------------------------------------------------------------------------- costs


def test_num_params_and_flops_by_hand(tiny_space):
    # tiny: V = 99, P = 64, T = 2, H = 32, ffn_ratio = 4
    arch = Arch.parse("16:mha,sepconv3,identity,identity|24:ffn,identity,identity,identity")
    tiny_space.validate(arch)

    embeddings = (99 + 64 + 2) * 16 + 2 * 16  # word + position + type embeddings, LayerNorm
    assert embeddings == 2672
    mha16 = 4 * (16 * 16 + 16) + 2 * 16  # q, k, v, out dense + LayerNorm
    assert mha16 == 1120
    sepconv3_16 = 16 * 3 + 16 + (16 * 16 + 16) + 2 * 16  # depthwise (+bias), pointwise, LayerNorm
    assert sepconv3_16 == 368
    ffn24 = (24 * 96 + 96) + (96 * 24 + 24) + 2 * 24  # 24 -> 96 -> 24, LayerNorm
    assert ffn24 == 4776
    boundary = 16 * 24 + 24  # adapter 16 -> 24
    output = 24 * 32 + 32  # adapter 24 -> teacher width 32
    total = embeddings + mha16 + sepconv3_16 + ffn24 + boundary + output
    assert total == 10_144
    assert tiny_space.num_params(arch) == 10_144
    assert op_params("mha", 16, ffn_ratio=4) == 1120
    assert op_params("sepconv3", 16, ffn_ratio=4) == 368
    assert op_params("ffn", 24, ffn_ratio=4) == 4776
    assert op_params("identity", 24, ffn_ratio=4) == 0

    # FLOPs at T = 10 tokens (2 x MACs)
    t = 10
    mha_f = 2 * (4 * t * 16 * 16 + 2 * t * t * 16)  # q, k, v, out + scores and context
    assert mha_f == 26_880
    sep_f = 2 * (t * 16 * 3 + t * 16 * 16)  # depthwise k=3 + pointwise
    assert sep_f == 6_080
    ffn_f = 2 * (2 * t * 24 * 96)
    assert ffn_f == 92_160
    boundary_f = 2 * t * 16 * 24
    output_f = 2 * t * 24 * 32
    assert mha_f + sep_f + ffn_f + boundary_f + output_f == 148_160
    assert tiny_space.flops(arch, 10) == 148_160
    assert op_flops("mha", 16, 10, ffn_ratio=4) == 26_880
    assert op_flops("identity", 16, 10, ffn_ratio=4) == 0


def test_costs_reject_unknown_op_and_bad_seq_len(tiny_space):
    with pytest.raises(SpaceError, match="unknown op 'conv'"):
        op_params("conv", 16, ffn_ratio=4)
    with pytest.raises(SpaceError, match="unknown op 'conv'"):
        op_flops("conv", 16, 8, ffn_ratio=4)
    arch = tiny_space.largest_arch()
    for bad in (0, -1, 1.5, "128"):
        with pytest.raises(ValueError, match="seq_len must be a positive integer"):
            tiny_space.flops(arch, bad)


def test_minilm_teacher_arch_params():
    space = SearchSpace.load("minilm_l6")
    V, P, T, H, F, L = 30522, 512, 2, 384, 1536, 6
    embeddings = (V + P + T) * H + 2 * H
    assert embeddings == 11_918_592
    attention = 4 * (H * H + H) + 2 * H
    ffn = (H * F + F) + (F * H + H) + 2 * H
    layer = attention + ffn
    assert layer == 1_774_464
    bert_without_pooler = embeddings + L * layer
    assert bert_without_pooler == 22_565_376
    pooler = H * H + H
    assert bert_without_pooler + pooler == 22_713_216  # the usual MiniLM-L6-H384 count includes the pooler
    adapters = 2 * (H * H + H) + (H * H + H)  # two block boundaries + the output adapter
    assert space.num_params(space.teacher_arch()) == 22_565_376 + 3 * 147_840 == 23_008_896

    # and the real transformers BertModel of that shape agrees
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=12,
                        intermediate_size=F, max_position_embeddings=P, type_vocab_size=T)
    with torch.device("meta"):
        model = BertModel(config, add_pooling_layer=False)
    assert sum(p.numel() for p in model.parameters()) == bert_without_pooler
    assert space.num_params(space.teacher_arch()) == bert_without_pooler + adapters


def test_costs_match_extracted_models(tiny_space):
    """num_params is the extracted model's real parameter count; flops is what torch's flop counter counts."""
    from torch.utils.flop_counter import FlopCounterMode

    from nasbert import SuperNet

    supernet = SuperNet(tiny_space).eval()
    rng = np.random.default_rng(11)
    pruned = Arch.parse("32:mha,ffn96,identity,identity|16:ffn20,identity,identity,identity")
    archs = [tiny_space.sample(rng) for _ in range(6)] + [tiny_space.smallest_arch(), tiny_space.largest_arch(), pruned]
    ids = torch.randint(5, tiny_space.teacher.vocab_size, (1, 10), generator=torch.Generator().manual_seed(0))
    for arch in archs:
        model = supernet.extract(arch)
        assert sum(p.numel() for p in model.parameters()) == tiny_space.num_params(arch), str(arch)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(ids)
        assert counter.get_total_flops() == tiny_space.flops(arch, 10), str(arch)


# ---------------------------------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("name", ["tiny", "minilm_l6", "bert_base"])
def test_to_dict_from_dict_round_trip(name):
    space = SearchSpace.load(name)
    again = SearchSpace.from_dict(space.to_dict())
    assert again == space
    assert again.to_dict() == space.to_dict()
    assert SearchSpace.from_dict(yaml.safe_load(space.to_yaml())) == space


def test_round_trip_of_custom_space(tmp_path):
    space = SearchSpace.from_dict(_small_space_dict(), source="custom")
    assert space.ops == ("mha", "ffn", "identity")
    assert SearchSpace.from_dict(space.to_dict()) == space
    path = tmp_path / "small.yaml"
    path.write_text(space.to_yaml())
    assert SearchSpace.load(path) == space
