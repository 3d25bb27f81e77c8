"""Tests of the ``nasbert`` command line: in-process through ``nasbert.cli.main`` and through the real script."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nasbert import Arch, SearchSpace, SuperNet
from nasbert.cli import main

ARCH = "16:mha,sepconv3,ffn,identity|24:sepconv5,mha,identity,identity"


def _run(out, teacher, *extra, space="tiny"):
    args = ["run", "--until", "supernet", "--out", str(out)]
    if space is not None:
        args += ["--space", space]
    if teacher is not None:
        args += ["--teacher", str(teacher)]
    return main(args + list(extra))


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


@pytest.fixture(scope="module")
def run_dir(tiny_teacher_dir, tmp_path_factory) -> Path:
    """One finished tiny run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert _run(out, tiny_teacher_dir) == 0
    return out


def _script() -> list[str]:
    exe = shutil.which("nasbert") or str(Path(sys.executable).with_name("nasbert"))
    assert Path(exe).is_file(), "the nasbert console script is installed next to the venv's python"
    return [exe]


# ---------------------------------------------------------------------------------------------------- space


def test_space_summary(capsys):
    assert main(["space", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "search space 'tiny'" in out
    assert "paths/block   2,343" in out
    assert "architectures 5,489,649" in out  # 2343 ** 2
    assert "slots         8 in 2 blocks of 4" in out
    assert "16:sepconv3,identity,identity,identity|16:sepconv3,identity,identity,identity" in out


def test_space_default_is_minilm(capsys):
    assert main(["space"]) == 0
    out = capsys.readouterr().out
    assert "search space 'minilm_l6'" in out
    assert "paths/block   3,124" in out


def test_space_list(capsys):
    assert main(["space", "--list"]) == 0
    assert capsys.readouterr().out.split() == ["bert_base", "bert_base_elastic", "minilm_l6", "minilm_l6_elastic",
                                               "mobilebert", "mobilebert_minilm", "tiny"]


def test_space_elastic_is_the_builtin_teachers(capsys):
    assert main(["space", "elastic"]) == 0
    out = capsys.readouterr().out
    assert "search space 'elastic'" in out and "paths/block   117" in out
    assert main(["space", "minilm_l6_elastic"]) == 0
    assert "paths/block   117" in capsys.readouterr().out


def test_space_unknown_name(capsys):
    assert main(["space", "no_such_space"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("nasbert: error: ")
    assert "unknown search space 'no_such_space'" in captured.err


def test_space_from_yaml_path(tmp_path, capsys, tiny_space):
    good = tmp_path / "mine.yaml"
    good.write_text(tiny_space.to_yaml())
    assert main(["space", str(good)]) == 0
    assert "paths/block   2,343" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_space.to_yaml() + "num_layers: 3\n")
    assert main(["space", str(bad)]) == 1
    assert "unknown key 'num_layers'" in capsys.readouterr().err


def test_console_script_space(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(_script() + ["space", "tiny"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "paths/block   2,343" in done.stdout
    done = subprocess.run(_script() + ["space", "bert_huge"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "nasbert: error: unknown search space 'bert_huge'" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------------- run


def test_run_writes_the_run_directory(run_dir, tiny_teacher_dir, tiny_space):
    manifest = _manifest(run_dir)
    assert manifest["nasbert_run"] == 1
    config = manifest["config"]
    assert (config["space"], config["teacher"], config["seed"]) == ("tiny", tiny_teacher_dir, 0)
    assert config["train"]["steps"] == 200 and config["corpus"]["source"] == "builtin"  # the defaults, recorded
    assert manifest["seed"] == 0
    assert manifest["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    stage = manifest["stages"]["supernet"]
    assert stage["status"] == "done"
    assert stage["teacher"] == tiny_teacher_dir
    assert 0 <= stage["teacher_parity_max_abs_diff"] < 1e-4
    assert stage["updated"]

    assert SearchSpace.load(run_dir / "space.yaml") == tiny_space
    supernet_dir = run_dir / "supernet"
    assert (supernet_dir / "supernet.safetensors").is_file()
    assert (supernet_dir / "supernet.json").is_file()
    assert (supernet_dir / "tokenizer_config.json").is_file()
    supernet = SuperNet.from_pretrained(supernet_dir)
    assert supernet.space == tiny_space
    assert stage["supernet_params"] == sum(p.numel() for p in supernet.parameters())
    # nothing temporary left behind
    assert sorted(p.name for p in run_dir.iterdir()) == ["manifest.json", "space.yaml", "supernet"]


def test_run_output(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, tiny_teacher_dir) == 0
    stdout = capsys.readouterr().out
    assert "search space 'tiny'" in stdout
    assert f"run {out}: supernet done" in stdout


def test_run_again_is_a_no_op(run_dir, tiny_teacher_dir, caplog):
    manifest_path = run_dir / "manifest.json"
    weights = run_dir / "supernet" / "supernet.safetensors"
    before = manifest_path.read_bytes(), manifest_path.stat().st_mtime_ns, weights.stat().st_mtime_ns
    updated = _manifest(run_dir)["stages"]["supernet"]["updated"]
    with caplog.at_level(logging.INFO, logger="nasbert"):
        assert _run(run_dir, tiny_teacher_dir) == 0
    assert "stage supernet: already done" in caplog.text
    assert "building the supernet" not in caplog.text
    after = manifest_path.read_bytes(), manifest_path.stat().st_mtime_ns, weights.stat().st_mtime_ns
    assert after == before
    assert _manifest(run_dir)["stages"]["supernet"]["updated"] == updated


def test_run_with_another_seed_is_refused(run_dir, tiny_teacher_dir, capsys):
    before = (run_dir / "manifest.json").read_bytes()
    assert _run(run_dir, tiny_teacher_dir, "--seed", "1") == 1
    err = capsys.readouterr().err
    assert "was made with seed = 0, not 1" in err
    assert "--force" in err
    assert (run_dir / "manifest.json").read_bytes() == before


def test_a_run_goes_on_with_other_workers_and_threads_but_not_other_steps(run_dir, tiny_teacher_dir, capsys):
    """train.workers / train.threads / search.workers say how the work is spread, not what is computed."""
    assert _run(run_dir, tiny_teacher_dir, "train.workers=2", "train.threads=1", "search.workers=4") == 0
    assert _run(run_dir, tiny_teacher_dir, "train.steps=7") == 1
    assert "was made with train.steps" in capsys.readouterr().err


def test_run_with_another_space_is_refused(run_dir, tiny_teacher_dir, tmp_path, capsys, tiny_space):
    other = tmp_path / "tiny_copy.yaml"
    other.write_text(tiny_space.to_yaml())
    assert _run(run_dir, tiny_teacher_dir, space=str(other)) == 1
    assert "was made with space = 'tiny'" in capsys.readouterr().err


def test_run_force_redoes(tiny_teacher_dir, tmp_path, caplog):
    out = tmp_path / "run"
    assert _run(out, tiny_teacher_dir) == 0
    weights = out / "supernet" / "supernet.safetensors"
    stamp = weights.stat().st_mtime_ns
    (out / "supernet" / "stale.txt").write_text("left over from the first run")
    assert _run(out, tiny_teacher_dir, "--seed", "1") == 1  # refused without --force
    with caplog.at_level(logging.INFO, logger="nasbert"):
        assert _run(out, tiny_teacher_dir, "--seed", "1", "--force") == 0
    assert "building the supernet" in caplog.text
    assert "already done" not in caplog.text
    manifest = _manifest(out)
    assert manifest["config"]["seed"] == 1 and manifest["seed"] == 1
    assert manifest["stages"]["supernet"]["status"] == "done"
    assert weights.is_file() and weights.stat().st_mtime_ns != stamp
    assert not (out / "supernet" / "stale.txt").exists()
    # --force with the same config also rebuilds
    stamp = weights.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nasbert"):
        assert _run(out, tiny_teacher_dir, "--seed", "1", "--force") == 0
    assert "building the supernet" in caplog.text
    assert weights.stat().st_mtime_ns != stamp


def test_run_refuses_a_foreign_non_empty_directory(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _run(out, tiny_teacher_dir) == 1
    assert "is not a nasbert run (no manifest.json)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_run_missing_teacher(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, "/does/not/exist") == 1
    err = capsys.readouterr().err
    assert "teacher directory '/does/not/exist' does not exist" in err
    assert not (out / "supernet").exists()
    assert not (out / "space.yaml").exists()
    leftovers = [p.name for p in out.iterdir() if p.name != "manifest.json"] if out.exists() else []
    assert leftovers == []
    if (out / "manifest.json").exists():
        assert _manifest(out)["stages"] == {}


def test_run_teacher_not_matching_space(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, tiny_teacher_dir, space="minilm_l6") == 1
    err = capsys.readouterr().err
    assert "has hidden_size = 32" in err
    assert "teacher.hidden_size = 384" in err
    assert "minilm_l6" in err
    assert not (out / "supernet").exists()
    assert not (out / "space.yaml").exists()


def test_run_unknown_space(tiny_teacher_dir, tmp_path, capsys):
    assert _run(tmp_path / "run", tiny_teacher_dir, space="bert_huge") == 1
    assert "unknown search space 'bert_huge'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "supernet").exists()


# ---------------------------------------------------------------------------------------------------- config file


def test_config_unknown_key(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("space: tiny\nepochs: 3\n")
    assert main(["run", "--until", "supernet", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "unknown config key 'epochs'" in err
    assert str(cfg) in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("seed: ten\n", ["'seed'", "'ten'"]),
        ("seed: true\n", ["'seed'", "True"]),
        ("space: 3\n", ["'space'", "got 3"]),
        ("- tiny\n", ["mapping"]),
        ("space: [tiny\n", ["not valid YAML"]),
    ],
)
def test_config_bad_values(tmp_path, capsys, text, fragments):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    assert main(["run", "--until", "supernet", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nasbert: error: ")
    assert str(cfg) in err
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "run").exists()


def test_config_missing_file(tmp_path, capsys):
    assert main(["run", "--until", "supernet", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "config file" in err and "nope.yaml' does not exist" in err


def test_config_file_run_and_command_line_override(tiny_teacher_dir, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"space": "tiny", "teacher": tiny_teacher_dir, "seed": 5}))
    out = tmp_path / "run"
    assert main(["run", "--until", "supernet", "--config", str(cfg), "--out", str(out), "--seed", "7"]) == 0
    manifest = _manifest(out)
    config = manifest["config"]
    assert (config["space"], config["teacher"], config["seed"]) == ("tiny", tiny_teacher_dir, 7)
    assert manifest["stages"]["supernet"]["status"] == "done"


# ---------------------------------------------------------------------------------------------------- extract


def _batch(space):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, space.teacher.vocab_size, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_extract_arch_matches_supernet(run_dir, tmp_path, capsys, tiny_space, tiny_teacher_dir):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "model"
    assert main(["extract", "--run", str(run_dir), "--arch", ARCH, "--out", str(out)]) == 0
    arch = Arch.parse(ARCH)
    stdout = capsys.readouterr().out
    assert f"{out}: {ARCH}" in stdout
    assert f"{tiny_space.num_params(arch):,} parameters" in stdout

    for name in ("config.json", "model.safetensors", "modeling_nasbert.py", "configuration_nasbert.py",
                 "tokenizer_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert "AutoModel" in config["auto_map"] and "AutoConfig" in config["auto_map"]
    assert config["blocks"] == arch.to_dict()["blocks"]

    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert not model.training
    # embeddings 165*16+32 = 2672; 16: mha 1120, sepconv3 368, ffn 2160; 24: sepconv5 792, mha 2448;
    # adapters 16*24+24 = 408 and 24*32+32 = 800
    assert sum(p.numel() for p in model.parameters()) == tiny_space.num_params(arch) == 10_768
    supernet = SuperNet.from_pretrained(run_dir / "supernet").eval()
    ids, mask = _batch(tiny_space)
    with torch.no_grad():
        expected = supernet(ids, arch=arch)
        got = model(ids).last_hidden_state
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        expected = supernet(ids, mask, arch=arch)
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=0)
    assert expected.shape == (2, 9, tiny_space.teacher.hidden_size)

    # the export carries the teacher's tokenizer
    tokenizer, teacher_tokenizer = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_teacher_dir)
    assert tokenizer.get_vocab() == teacher_tokenizer.get_vocab()
    text = "the value of a function is returned"
    assert tokenizer(text)["input_ids"] == teacher_tokenizer(text)["input_ids"]
    assert tokenizer.model_max_length == teacher_tokenizer.model_max_length


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--teacher-arch", "32:mha,ffn,mha,ffn|32:mha,ffn,mha,ffn"),
        ("--largest", "32:mha,ffn,mha,ffn|32:mha,ffn,mha,ffn"),
        ("--smallest", "16:sepconv3,identity,identity,identity|16:sepconv3,identity,identity,identity"),
    ],
)
def test_extract_named_archs(run_dir, tmp_path, capsys, tiny_space, flag, expected):
    out = tmp_path / "model"
    assert main(["extract", "--run", str(run_dir), flag, "--out", str(out)]) == 0
    assert f"{out}: {expected}" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["blocks"] == Arch.parse(expected).to_dict()["blocks"]
    assert (out / "model.safetensors").is_file()


def test_extract_teacher_arch_reproduces_teacher(run_dir, tmp_path, tiny_teacher, tiny_space):
    from transformers import AutoModel

    out = tmp_path / "model"
    assert main(["extract", "--run", str(run_dir), "--teacher-arch", "--out", str(out)]) == 0
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    ids, mask = _batch(tiny_space)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = tiny_teacher(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", [None, 3])
def test_extract_random_draw(run_dir, tmp_path, capsys, tiny_space, seed):
    out = tmp_path / "model"
    args = ["extract", "--run", str(run_dir), "--out", str(out)] + ([] if seed is None else ["--seed", str(seed)])
    assert main(args) == 0
    expected = tiny_space.sample(np.random.default_rng(0 if seed is None else seed))
    assert f"{out}: {expected}" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["blocks"] == expected.to_dict()["blocks"]


@pytest.mark.parametrize(
    "arch, message",
    [
        ("20:mha,ffn,identity,identity|16:mha,ffn,identity,identity", "width 20 is not in hidden_choices"),
        ("16:mha,identity,ffn,identity|16:mha,ffn,identity,identity", "identity ops must come last"),
        ("16:mha,ffn,identity,identity", "arch has 1 blocks"),
        ("16:mha,conv,identity,identity|16:mha,ffn,identity,identity", "op 'conv' is not in"),
        ("sixteen:mha", "is not of the form WIDTH:op"),
    ],
)
def test_extract_arch_not_in_space(run_dir, tmp_path, capsys, arch, message):
    out = tmp_path / "model"
    assert main(["extract", "--run", str(run_dir), "--arch", arch, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nasbert: error: ")
    assert message in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


# BUG (nasbert/space.py Arch.parse/Arch.from_json/Arch.from_dict; see tests/test_space.py): malformed JSON or a
# non-list "blocks" raise json.JSONDecodeError / TypeError, which nasbert/cli.py main() does not catch, so the
# user gets a traceback instead of "nasbert: error: ..." and exit code 1.
@pytest.mark.parametrize("arch", ['{"blocks": [', '{"blocks": 5}'])
def test_extract_malformed_json_arch(run_dir, tmp_path, capsys, arch):
    out = tmp_path / "model"
    assert main(["extract", "--run", str(run_dir), "--arch", arch, "--out", str(out)]) == 1
    assert capsys.readouterr().err.startswith("nasbert: error: ")
    assert not out.exists()


def test_extract_from_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["extract", "--run", str(tmp_path), "--largest", "--out", str(tmp_path / "model")]) == 1
    assert "is not a saved supernet" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_console_script_run_and_extract(tiny_teacher_dir, tmp_path, tiny_space):
    """The whole path through a real process: `python -m nasbert.cli run`, then the `nasbert` script."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "nasbert.cli", "run", "--until", "supernet", "--space", "tiny", "--teacher",
                           tiny_teacher_dir, "--out", str(run)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "stage supernet: done" in done.stderr
    assert _manifest(run)["stages"]["supernet"]["status"] == "done"
    model = tmp_path / "model"
    done = subprocess.run(_script() + ["extract", "--run", str(run), "--arch", ARCH, "--out", str(model)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{tiny_space.num_params(Arch.parse(ARCH)):,} parameters" in done.stdout
    assert (model / "model.safetensors").is_file()
    done = subprocess.run([sys.executable, "-m", "nasbert.cli", "run", "--until", "supernet", "--teacher", "/does/not/exist",
                           "--space", "tiny", "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 1
    assert "teacher directory '/does/not/exist' does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "bad" / "supernet").exists()
