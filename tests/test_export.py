"""Extracted models as Hugging Face directories: reload with and without nasbert, task heads, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from nasbert import Arch, NasBertForMaskedLM, NasBertForSequenceClassification, NasBertModel, SuperNet
from nasbert.export import save_hf_model

ARCH = Arch.parse("24:sepconv5,mha,ffn72,identity|16:ffn,sepconv3,mha,sepconv7")  # ffn72: a pruned FFN (of 96)


@pytest.fixture(scope="module")
def supernet(tiny_space, tiny_teacher) -> SuperNet:
    net = SuperNet.from_teacher(tiny_space, tiny_teacher).eval()
    with torch.no_grad():  # move the weights off their initial values, as training would
        g = torch.Generator().manual_seed(1)
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return net


@pytest.fixture(scope="module")
def exported(supernet, tiny_teacher_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model"
    save_hf_model(supernet.extract(ARCH), path, tokenizer=AutoTokenizer.from_pretrained(tiny_teacher_dir))
    return path


def test_directory_holds_weights_config_code_and_tokenizer(exported):
    names = set(os.listdir(exported))
    assert {"config.json", "model.safetensors", "modeling_nasbert.py", "configuration_nasbert.py",
            "tokenizer_config.json"} <= names
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "nasbert"
    assert config["auto_map"]["AutoModel"] == "modeling_nasbert.NasBertModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_nasbert.NasBertConfig"
    assert config["blocks"] == ARCH.to_dict()["blocks"]
    assert not [n for n in os.listdir(exported.parent) if n.endswith(".tmp")]


def test_reload_with_nasbert_imported_matches_supernet(supernet, exported, batch):
    model = AutoModel.from_pretrained(exported)
    assert isinstance(model, NasBertModel)
    ids, mask, types = batch
    with torch.no_grad():
        expected = supernet(ids, mask, types, arch=ARCH)
        got = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_reload_without_nasbert_via_trust_remote_code(supernet, exported, batch, tmp_path):
    """A fresh Python in which importing nasbert fails loads the directory through its own modeling files."""
    ids, mask, types = batch
    torch.save({"ids": ids, "mask": mask, "types": types}, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import sys
        class NoNasbert:
            def find_spec(self, name, path=None, target=None):
                if name == "nasbert" or name.startswith("nasbert."):
                    raise ImportError("nasbert is blocked in this test")
        sys.meta_path.insert(0, NoNasbert())
        import torch
        from transformers import AutoModel, AutoTokenizer
        model = AutoModel.from_pretrained({str(exported)!r}, trust_remote_code=True)
        AutoTokenizer.from_pretrained({str(exported)!r}, trust_remote_code=True)
        assert not any(m == "nasbert" or m.startswith("nasbert.") for m in sys.modules), "nasbert was imported"
        x = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            out = model(input_ids=x["ids"], attention_mask=x["mask"], token_type_ids=x["types"]).last_hidden_state
        torch.save(out, {str(tmp_path / "out.pt")!r})
        print(type(model).__module__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout
    with torch.no_grad():
        expected = supernet(ids, mask, types, arch=ARCH)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=1e-5, rtol=0)


def test_sequence_classification_head_loads_backbone_and_trains(exported, batch, tmp_path):
    ids, mask, types = batch
    model = AutoModelForSequenceClassification.from_pretrained(exported, num_labels=3)
    assert isinstance(model, NasBertForSequenceClassification)
    backbone = AutoModel.from_pretrained(exported)
    for name, p in backbone.state_dict().items():
        assert torch.equal(model.nasbert.state_dict()[name], p), name
    labels = torch.tensor([0, 2, 1])
    model.train()
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert out.logits.shape == (3, 3) and out.loss.ndim == 0
    out.loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    model.eval()
    model.save_pretrained(tmp_path / "cls")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask, types).logits, model(ids, mask, types).logits)


def test_regression_head_uses_mse(exported, batch):
    ids, mask, _ = batch
    model = NasBertForSequenceClassification.from_pretrained(exported, num_labels=1).eval()
    target = torch.tensor([0.5, 1.0, 3.0])
    out = model(input_ids=ids, attention_mask=mask, labels=target)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), target))


def test_masked_lm_head_is_tied_to_the_embeddings(exported, batch):
    ids, mask, _ = batch
    model = AutoModelForMaskedLM.from_pretrained(exported)
    assert isinstance(model, NasBertForMaskedLM)
    labels = torch.full_like(ids, -100)
    labels[0, 1] = 7
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 7, model.config.vocab_size)
    expected = torch.nn.functional.cross_entropy(out.logits[0, 1][None], torch.tensor([7]))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()  # the decoder is the embedding matrix, so it gets the head's gradient
    assert model.nasbert.embeddings.word_embeddings.weight.grad[7].abs().sum() > 0


def test_failed_save_leaves_the_previous_export_intact(supernet, exported, monkeypatch):
    before = (exported / "model.safetensors").read_bytes()
    model = supernet.extract(Arch.parse("16:mha,identity,identity,identity|16:ffn,identity,identity,identity"))

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_hf_model(model, exported)
    assert (exported / "model.safetensors").read_bytes() == before
    assert not [n for n in os.listdir(exported.parent) if n.startswith(".")]


def test_many_sampled_archs_survive_save_and_reload(supernet, tiny_space, batch, tmp_path):
    ids, mask, types = batch
    rng = np.random.default_rng(7)
    for i in range(5):
        arch = tiny_space.sample(rng)
        save_hf_model(supernet.extract(arch), tmp_path / f"m{i}")
        model = AutoModel.from_pretrained(tmp_path / f"m{i}")
        assert sum(p.numel() for p in model.parameters()) == tiny_space.num_params(arch)
        with torch.no_grad():
            torch.testing.assert_close(model(ids, mask, types).last_hidden_state,
                                       supernet(ids, mask, types, arch=arch), atol=1e-5, rtol=0)


def test_int8_graph_is_written_within_its_bound_and_refused_beyond(tiny_space, tiny_teacher, tmp_path):
    import onnx
    import onnxruntime as ort

    from nasbert.onnxio import OnnxParityError, export_int8, export_onnx, int8_error

    model = SuperNet.from_teacher(tiny_space, tiny_teacher).extract(tiny_space.teacher_arch())
    export_onnx(model, tmp_path / "model.onnx")
    report = export_int8(model, tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    assert 0 < report["error"] <= 0.25 and report["bytes"] == (tmp_path / "model.int8.onnx").stat().st_size
    assert report["error"] == pytest.approx(int8_error(model, tmp_path / "model.onnx", tmp_path / "model.int8.onnx"))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.int8.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops  # it is an int8 graph
    ort.InferenceSession(str(tmp_path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(OnnxParityError, match="not written"):
        export_int8(model, tmp_path / "model.onnx", tmp_path / "strict.int8.onnx", max_error=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx"]
