"""Fine-tuning (``nasbert finetune``) on tiny models and a tiny GLUE-layout task written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nasbert import SuperNet
from nasbert.cli import main
from nasbert.config import ConfigError
from nasbert.export.hf import save_hf_model
from nasbert.finetune import load_task
from nasbert.finetune.trainer import (
    FinetuneConfig,
    FinetuneError,
    finetune,
    load_classifier,
    resolve_device,
)

WORDS = ["the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "this", "object", "class",
         "list", "type", "module", "name", "function"]


def _sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """Label 1 when the sentence holds the keyword 'value': a task a tiny model learns in a few dozen steps."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(4, 9))))
        label = i % 2
        if label:
            words[int(rng.integers(0, len(words)))] = "value"
        out.append((" ".join(words), label))
    return out


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    for split, n, seed in (("train", 192, 0), ("dev", 64, 1)):
        rows = "".join(f"{s}\t{y}\n" for s, y in _sentences(n, seed))
        (root / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    (root / "STS-B").mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    for split, n, seed in (("train", 64, 2), ("dev", 32, 3)):
        rng = np.random.default_rng(seed)
        rows = [f"{i}\tx\tx\tx\tx\tx\tx\t{a}\t{b}\t{rng.uniform(0, 5):.2f}\n"
                for i, ((a, _), (b, _)) in enumerate(zip(_sentences(n, seed), _sentences(n, seed + 10)))]
        (root / "STS-B" / f"{split}.tsv").write_text(header + "".join(rows))
    (root / "RTE").mkdir()  # a pair task: "entailment" when both texts hold the keyword or neither does
    for split, n, seed in (("train", 192, 6), ("dev", 64, 7)):
        first, second = _sentences(n, seed), _sentences(n, seed + 20)
        order = np.random.default_rng(seed).permutation(n)
        rows = [f"{i}\t{a}\t{second[j][0]}\t{'entailment' if ya == second[j][1] else 'not_entailment'}\n"
                for i, ((a, ya), j) in enumerate(zip(first, order))]
        (root / "RTE" / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(rows))
    return root


@pytest.fixture(scope="module")
def student_dir(tiny_space, tiny_teacher, tiny_teacher_dir, tmp_path_factory):
    """A nasbert model exported from the tiny supernet (a mixed architecture, not the teacher's)."""
    supernet = SuperNet.from_teacher(tiny_space, tiny_teacher)
    arch = tiny_space.sample(np.random.default_rng(3))
    path = tmp_path_factory.mktemp("student") / "model"
    save_hf_model(supernet.extract(arch), path, tokenizer=AutoTokenizer.from_pretrained(tiny_teacher_dir))
    return str(path)


def _dev_accuracy(model_dir, tsv, *, max_seq_len: int) -> float:
    """Accuracy of a saved classifier on a GLUE-layout single-sentence TSV, one sentence at a time (no padding)."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [line.split("\t") for line in Path(tsv).read_text().splitlines()[1:]]
    with torch.no_grad():
        right = sum(int(model(**tok(sentence, truncation=True, max_length=max_seq_len, return_tensors="pt")).logits
                        .argmax(-1)) == int(label) for sentence, label in rows)
    return right / len(rows)


FAST = {"epochs": 3, "batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.1, "max_seq_len": 16, "checkpoint_every": 5,
        "log_every": 4}


def test_nasbert_model_learns_sst2_from_local_tsv(glue_dir, student_dir, tmp_path):
    task = load_task("sst2", data_dir=glue_dir)
    result = finetune(student_dir, task, out=tmp_path / "ft", config=FinetuneConfig(**{**FAST, "epochs": 8}),
                      progress=False)
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert result.steps == 8 * 12 == metrics["steps"]
    assert metrics["dev"]["accuracy"] == result.metrics["accuracy"] >= 0.85  # chance is 0.5
    assert metrics["best"]["dev"]["accuracy"] >= metrics["dev"]["accuracy"]
    assert [h["step"] for h in metrics["history"]] == list(range(12, 97, 12))
    assert not (tmp_path / "ft" / "checkpoint.pt").exists()
    # The saved classifier reloads through the Auto classes and its ONNX graph gives the same logits.
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ft" / "model").eval()
    assert type(model).__name__ == "NasBertForSequenceClassification"
    assert model.config.id2label == {0: "negative", 1: "positive"}
    import onnxruntime as ort

    tok = AutoTokenizer.from_pretrained(tmp_path / "ft" / "model")
    enc = tok(["the value of this", "a class on the list module"], padding=True, return_tensors="np",
              return_token_type_ids=True)
    session = ort.InferenceSession(str(tmp_path / "ft" / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask",
                                                                       "token_type_ids")})[0]
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert metrics["onnx_max_abs_diff"] < 1e-4
    # the int8 graph: written, and scored on the dev set next to the fp32 graph (which scores as PyTorch does)
    int8 = metrics["int8"]
    assert (tmp_path / "ft" / "model" / "model.int8.onnx").stat().st_size == int8["bytes"]
    assert int8["dev_fp32_onnx"]["accuracy"] == pytest.approx(metrics["dev"]["accuracy"])
    assert 0 < int8["error"] and int8["dev"]["accuracy"] >= 0.5
    from nasbert.finetune.trainer import encode_examples, predict_onnx

    dev = encode_examples(task.dev, tok, max_seq_len=FAST.get("max_seq_len", 128), regression=False)
    logits = predict_onnx(tmp_path / "ft" / "model" / "model.int8.onnx", dev, batch_size=4, pad_id=0)
    assert int8["dev"]["accuracy"] == pytest.approx(float((logits.argmax(-1) == np.array(dev.labels)).mean()))


def test_hf_bert_finetunes_with_the_same_command(glue_dir, tiny_teacher_dir, tmp_path, capsys):
    code = main(["finetune", tiny_teacher_dir, "--task", "SST-2", "--data-dir", str(glue_dir), "--epochs", "4",
                 "--lr", "3e-3", "--batch-size", "16", "--max-seq-len", "16", "--out", str(tmp_path / "t"),
                 "--no-progress", "--no-onnx", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["dev"]) == {"accuracy"} and out["dev"]["accuracy"] >= 0.85  # learnt: chance is 0.5
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["dev"] == out["dev"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "t" / "model")
    assert type(model).__name__ == "BertForSequenceClassification"
    # The accuracy reported is the saved model's on the dev set, recomputed here sentence by sentence.
    expected = _dev_accuracy(tmp_path / "t" / "model", glue_dir / "SST-2" / "dev.tsv", max_seq_len=16)
    assert out["dev"]["accuracy"] == pytest.approx(expected, abs=1e-9)
    # A second identical call finds the finished run and does not train again.
    mtime = (tmp_path / "t" / "metrics.json").stat().st_mtime_ns
    assert main(["finetune", tiny_teacher_dir, "--task", "sst2", "--data-dir", str(glue_dir), "--epochs", "4",
                 "--lr", "3e-3", "--batch-size", "16", "--max-seq-len", "16", "--out", str(tmp_path / "t"),
                 "--no-progress", "--no-onnx"]) == 0
    assert (tmp_path / "t" / "metrics.json").stat().st_mtime_ns == mtime
    # Other settings in the same directory: a clear error, nothing changed.
    assert main(["finetune", tiny_teacher_dir, "--task", "sst2", "--data-dir", str(glue_dir), "--epochs", "2",
                 "--out", str(tmp_path / "t"), "--no-progress"]) == 1
    assert "other settings (config differ)" in capsys.readouterr().err
    assert (tmp_path / "t" / "metrics.json").stat().st_mtime_ns == mtime


def test_a_learning_rate_grid_keeps_the_best_rate_and_reuses_finished_runs(
        glue_dir, student_dir, tmp_path, capsys):
    out = tmp_path / "grid"
    base = ["finetune", student_dir, "--task", "sst2", "--data-dir", str(glue_dir), "--epochs", "8",
            "--batch-size", "16", "--max-seq-len", "16", "--no-progress", "--no-onnx"]
    argv = [*base, "--out", str(out), "--json"]
    assert main([*argv, "--lr", "3e-3", "1e-6"]) == 0
    report = json.loads(capsys.readouterr().out)
    scores = {lr: json.loads((out / f"lr-{lr}" / "metrics.json").read_text())["dev"]["accuracy"]
              for lr in ("1e-06", "0.003")}
    assert report["lr_grid"] == scores and scores["0.003"] > scores["1e-06"]  # 1e-6 barely moves the new head
    assert report["lr"] == 3e-3 and report["model"] == str(out / "lr-0.003" / "model")
    assert report["pair_encoding"] == "cross"
    assert report["dev"]["accuracy"] == scores["0.003"]
    grid = json.loads((out / "lr_grid.json").read_text())
    assert grid["lrs"] == [1e-6, 3e-3] and grid["lr"] == 3e-3 and grid["model"] == "lr-0.003/model"
    assert grid["metric"] == "accuracy" and grid["scores"] == scores
    # another rate: only it is trained, the finished runs are read
    stamps = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in out.glob("lr-*")}
    assert main([*argv, "--lr", "3e-3", "1e-6", "1e-3"]) == 0
    assert json.loads(capsys.readouterr().out)["lr_grid"].keys() == {"1e-06", "0.001", "0.003"}
    assert {d: (out / d / "metrics.json").stat().st_mtime_ns for d in stamps} == stamps
    assert json.loads((out / "lr_grid.json").read_text())["lrs"] == [1e-6, 1e-3, 3e-3]
    # a grid in a folder that holds something else (e.g. a one-rate run), and a one-rate grid: refused, nothing written
    other = tmp_path / "other"
    other.mkdir()
    (other / "finetune.json").write_text("{}")
    assert main([*base, "--out", str(other), "--lr", "3e-3", "1e-3"]) == 1
    assert "not a learning-rate grid's directory (it holds finetune.json)" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["finetune.json"]
    from nasbert.finetune import finetune_lr_grid

    sst2 = load_task("sst2", data_dir=glue_dir)
    with pytest.raises(FinetuneError, match="two or more points"):
        finetune_lr_grid(student_dir, sst2, out=tmp_path / "g", lrs=[1e-3, 1e-3])
    with pytest.raises(FinetuneError, match="positive"):
        finetune_lr_grid(student_dir, sst2, out=tmp_path / "g", lrs=[1e-3, -1.0])
    assert not (tmp_path / "g").exists()


def test_a_nasbert_model_gets_a_rate_grid_by_default_and_larger_rates_only_while_the_largest_wins(
        glue_dir, student_dir, tiny_teacher_dir, tmp_path, capsys):
    from nasbert.finetune.trainer import AUTO_EXTEND, AUTO_LRS

    base = ["--task", "sst2", "--data-dir", str(glue_dir), "--epochs", "1", "--batch-size", "16", "--max-seq-len",
            "16", "--no-progress", "--no-onnx", "--json"]
    assert main(["finetune", student_dir, *base, "--out", str(tmp_path / "auto")]) == 0
    report = json.loads(capsys.readouterr().out)
    scores = {float(k): v for k, v in report["lr_grid"].items()}
    assert set(AUTO_LRS) <= set(scores) <= set(AUTO_LRS) | set(AUTO_EXTEND)
    largest_wins = max(AUTO_LRS, key=lambda lr: (scores[lr], -lr)) == max(AUTO_LRS)
    assert (AUTO_EXTEND[0] in scores) == largest_wins  # the extension runs only while the largest rate wins
    assert report["lr"] == max(scores, key=lambda lr: (scores[lr], -lr))
    for lr in scores:
        assert json.loads((tmp_path / "auto" / f"lr-{lr:g}" / "finetune.json").read_text())["config"]["lr"] == lr
    # an explicit extension follows the same rule: 1e-6 loses to 3e-3, so 1e-2 is tried, and 3e-1 only if 1e-2 wins
    assert main(["finetune", student_dir, *base, "--lr", "1e-6", "3e-3", "--lr-extend", "1e-2", "3e-1",
                 "--out", str(tmp_path / "ext")]) == 0
    scores = {float(k): v for k, v in json.loads(capsys.readouterr().out)["lr_grid"].items()}
    assert 1e-2 in scores and (3e-1 in scores) == (scores[1e-2] > scores[3e-3])
    # any other model keeps one run at 5e-5, in OUT/ itself
    assert main(["finetune", tiny_teacher_dir, *base, "--out", str(tmp_path / "hf")]) == 0
    assert "lr_grid" not in json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "hf" / "finetune.json").read_text())["config"]["lr"] == FinetuneConfig.lr
    # both encodings on a task with one text: refused before anything is written
    assert main(["finetune", student_dir, *base, "--pair-encoding", "cross", "bi", "--out", str(tmp_path / "pe")]) == 1
    assert "has one text field" in capsys.readouterr().err
    assert not (tmp_path / "pe").exists()


def test_resume_is_exact(glue_dir, student_dir, tmp_path):
    task = load_task("sst2", data_dir=glue_dir)
    config = FinetuneConfig(**{**FAST, "epochs": 1.5})
    straight = finetune(student_dir, task, out=tmp_path / "a", config=config, onnx=False, progress=False)
    assert finetune(student_dir, task, out=tmp_path / "b", config=config, onnx=False, progress=False,
                    stop_after=7) is None
    assert (tmp_path / "b" / "checkpoint.pt").is_file() and not (tmp_path / "b" / "metrics.json").exists()
    resumed = finetune(student_dir, task, out=tmp_path / "b", config=config, onnx=False, progress=False)
    assert resumed.resumed and resumed.steps == straight.steps == 18
    assert resumed.metrics == straight.metrics
    a = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a" / "model").state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b" / "model").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_one_evaluation_after_the_last_step_gives_the_same_final_score(glue_dir, student_dir, tmp_path):
    """evals_per_epoch 0 evaluates once, at the end; evaluating draws no random number and changes no weight, so
    the final score and the weights are those of a run that evaluated every epoch."""
    task = load_task("sst2", data_dir=glue_dir)
    every = finetune(student_dir, task, out=tmp_path / "every", config=FinetuneConfig(**{**FAST, "epochs": 2}),
                     onnx=False, progress=False)
    once = finetune(student_dir, task, out=tmp_path / "once", onnx=False, progress=False,
                    config=FinetuneConfig(**{**FAST, "epochs": 2, "evals_per_epoch": 0}))
    assert once.metrics == every.metrics
    histories = [json.loads((tmp_path / d / "metrics.json").read_text())["history"] for d in ("every", "once")]
    assert [len(h) for h in histories] == [2, 1] and histories[1][0]["step"] == histories[0][-1]["step"]
    a = AutoModelForSequenceClassification.from_pretrained(tmp_path / "every" / "model").state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "once" / "model").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    with pytest.raises(ConfigError, match="evals_per_epoch"):
        FinetuneConfig(evals_per_epoch=-1)


def test_frozen_word_embeddings_stay_the_models_own_and_resume_exactly(glue_dir, student_dir, tmp_path):
    """The probe's recipe: the word embeddings (every candidate's are the teacher's) are not trained; every other
    weight is, and a killed run resumes to the same weights."""
    task = load_task("sst2", data_dir=glue_dir)
    config = FinetuneConfig(**{**FAST, "epochs": 1.5, "freeze_word_embeddings": True})
    straight = finetune(student_dir, task, out=tmp_path / "a", config=config, onnx=False, progress=False)
    assert finetune(student_dir, task, out=tmp_path / "b", config=config, onnx=False, progress=False,
                    stop_after=7) is None
    resumed = finetune(student_dir, task, out=tmp_path / "b", config=config, onnx=False, progress=False)
    assert resumed.resumed and resumed.metrics == straight.metrics
    before = AutoModelForSequenceClassification.from_pretrained(student_dir).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a" / "model").state_dict()
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b" / "model").state_dict()
    words = [k for k in after if k.endswith("word_embeddings.weight")]
    assert len(words) == 1
    torch.testing.assert_close(after[words[0]], before[words[0]], rtol=0, atol=0)
    changed = [k for k in after if k in before and k not in words and not torch.equal(after[k], before[k])]
    assert any("position_embeddings" in k for k in changed) and any("layers" in k or "layer." in k for k in changed)
    for key in after:
        torch.testing.assert_close(after[key], again[key], rtol=0, atol=0, msg=key)
    trained = finetune(student_dir, task, out=tmp_path / "c", onnx=False, progress=False,
                       config=FinetuneConfig(**{**FAST, "epochs": 1.5}))
    assert trained.steps == straight.steps
    unfrozen = AutoModelForSequenceClassification.from_pretrained(tmp_path / "c" / "model").state_dict()
    assert not torch.equal(unfrozen[words[0]], before[words[0]])


def test_the_device_is_recorded_and_one_that_is_not_there_is_refused_before_anything_is_written(
        glue_dir, student_dir, tmp_path, capsys, monkeypatch):
    task = load_task("sst2", data_dir=glue_dir)
    done = finetune(student_dir, task, out=tmp_path / "cpu", config=FinetuneConfig(**{**FAST, "epochs": 0.5}),
                    onnx=False, progress=False, device="cpu")
    assert json.loads((done.out / "metrics.json").read_text())["device"] == "cpu"
    for device, message in (("cuda:99", "asked for, but torch sees"), ("tpu", "unknown device 'tpu'")):
        with pytest.raises(FinetuneError, match=message):
            finetune(student_dir, task, out=tmp_path / "one", config=FinetuneConfig(**FAST), device=device)
        argv = ["finetune", student_dir, "--task", "sst2", "--data-dir", str(glue_dir), "--out", str(tmp_path / "grid"),
                "--no-progress", "--device", device]  # a nasbert model: the default rate grid
        assert main(argv) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "one").exists() and not (tmp_path / "grid").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(FinetuneError, match="sees no CUDA GPU"):
        resolve_device("cuda")


def test_seed_changes_head_and_order_but_is_reproducible(glue_dir, student_dir):
    task = load_task("sst2", data_dir=glue_dir)
    heads = [load_classifier(student_dir, task.task, seed=s)[0].classifier.weight.detach().clone() for s in (0, 0, 1)]
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)
    assert not torch.equal(heads[0], heads[2])


def test_prediction_layer_distillation(glue_dir, student_dir, tmp_path):
    task = load_task("sst2", data_dir=glue_dir)
    teacher = finetune(student_dir, task, out=tmp_path / "teacher", config=FinetuneConfig(**FAST), onnx=False,
                       progress=False)
    config = FinetuneConfig(**{**FAST, "epochs": 1, "kd_lambda": 1.0, "kd_temperature": 2.0})
    kd = finetune(student_dir, task, out=tmp_path / "kd", config=config, kd_teacher=teacher.model_dir, onnx=False,
                  progress=False)
    logits = torch.load(tmp_path / "kd" / "teacher_logits.pt")
    assert logits.shape == (len(task.train), 2)
    # The cached predictions are the fine-tuned teacher's own.
    from nasbert.finetune.trainer import encode_examples, predict

    net = AutoModelForSequenceClassification.from_pretrained(teacher.model_dir)
    tok = AutoTokenizer.from_pretrained(teacher.model_dir)
    enc = encode_examples(task.train, tok, max_seq_len=16, regression=False)
    np.testing.assert_allclose(logits.numpy(), predict(net, enc, batch_size=64, pad_id=0), atol=1e-5)
    plain = finetune(student_dir, task, out=tmp_path / "plain", config=FinetuneConfig(**{**FAST, "epochs": 1}),
                     onnx=False, progress=False)
    assert json.loads((tmp_path / "kd" / "metrics.json").read_text())["kd_teacher"] == str(teacher.model_dir)
    a = AutoModelForSequenceClassification.from_pretrained(kd.model_dir).classifier.weight
    b = AutoModelForSequenceClassification.from_pretrained(plain.model_dir).classifier.weight
    assert not torch.allclose(a, b)  # same seed, same data order: only the loss differs
    from nasbert.finetune.trainer import _loss

    s, t = torch.tensor([[2.0, -1.0]]), torch.tensor([[2.0, -1.0]])
    assert float(_loss(s, torch.tensor([1]), t, regression=False, kd_lambda=1.0, temperature=2.0)) == pytest.approx(0)
    ce = float(_loss(s, torch.tensor([1]), None, regression=False, kd_lambda=0.5, temperature=1.0))
    assert ce == pytest.approx(float(torch.nn.functional.cross_entropy(s, torch.tensor([1]))))
    mixed = float(_loss(s, torch.tensor([1]), t, regression=False, kd_lambda=0.5, temperature=1.0))
    assert mixed == pytest.approx(0.5 * ce)


def test_kd_teacher_with_other_labels_is_refused(glue_dir, student_dir, tmp_path):
    stsb = load_task("stsb", data_dir=glue_dir)
    reg = finetune(student_dir, stsb, out=tmp_path / "reg", config=FinetuneConfig(**{**FAST, "epochs": 1}),
                   onnx=False, progress=False)
    assert set(reg.metrics) == {"pearson", "spearmanr", "combined"}
    sst2 = load_task("sst2", data_dir=glue_dir)
    with pytest.raises(FinetuneError, match="predicts 1 labels"):
        finetune(student_dir, sst2, out=tmp_path / "kd", config=FinetuneConfig(**FAST), kd_teacher=reg.model_dir,
                 onnx=False, progress=False)


def test_generic_csv_task_through_the_cli(student_dir, tmp_path, capsys):
    for split, n, seed in (("train", 96, 4), ("dev", 32, 5)):
        rows = "".join(f'"{s}",{"pos" if y else "neg"}\n' for s, y in _sentences(n, seed))
        (tmp_path / f"{split}.csv").write_text("text,verdict\n" + rows)
    code = main(["finetune", student_dir, "--task", "keywords", "--train-file", str(tmp_path / "train.csv"),
                 "--dev-file", str(tmp_path / "dev.csv"), "--text-columns", "text", "--label-column", "verdict",
                 "--epochs", "1", "--lr", "3e-3", "--batch-size", "16", "--out", str(tmp_path / "ft"),
                 "--no-progress", "--no-onnx", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["dev"]) == {"accuracy", "f1", "combined"}
    config = json.loads((tmp_path / "ft" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}


@pytest.mark.parametrize("argv, message", [
    (["--task", "nope"], "nope"),
    (["--task", "sst2", "--data-dir", "/does/not/exist"], "train.tsv"),
    (["--task", "sst2", "--train-file", "x.csv"], "--dev-file"),
    (["--task", "sst2", "--epochs", "0"], "epochs"),
])
def test_bad_input_exits_1_and_writes_nothing(argv, message, glue_dir, student_dir, tmp_path, capsys):
    argv = [a if a != "DATA" else str(glue_dir) for a in argv]
    out = tmp_path / "ft"
    assert main(["finetune", student_dir, *argv, "--out", str(out), "--no-progress"]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_model_dir_is_a_clear_error(glue_dir, tmp_path, capsys):
    assert main(["finetune", str(tmp_path / "nowhere"), "--task", "sst2", "--data-dir", str(glue_dir), "--out",
                 str(tmp_path / "ft"), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()


def test_mean_pooling_reads_every_real_token_and_ignores_padding(glue_dir, student_dir, tmp_path):
    task = load_task("sst2", data_dir=glue_dir)
    cls_model, _, _ = load_classifier(student_dir, task.task, seed=0, pooling="cls")
    mean_model, _, _ = load_classifier(student_dir, task.task, seed=0)  # auto: mean for nasbert models
    assert mean_model.config.classifier_pooling == "mean" and cls_model.config.classifier_pooling == "cls"
    ids = torch.tensor([[2, 20, 21, 22, 3, 0, 0], [2, 23, 24, 25, 26, 27, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        mean_model.eval(), cls_model.eval()
        padded = mean_model(input_ids=ids, attention_mask=mask).logits
        alone = mean_model(input_ids=ids[:1, :5], attention_mask=mask[:1, :5]).logits
        h = mean_model.nasbert(ids[:1, :5]).last_hidden_state
        by_hand = mean_model.classifier(torch.tanh(mean_model.pooler(h.mean(1))))
        cls = cls_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, by_hand, atol=1e-5, rtol=0)
    assert not torch.allclose(padded, cls, atol=1e-4)
    # Saved and exported with the setting: the ONNX graph pools the same way.
    result = finetune(student_dir, task, out=tmp_path / "mean", config=FinetuneConfig(**{**FAST, "epochs": 1,
                                                                                          "pooling": "mean"}),
                      progress=False)
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["classifier_pooling"] == "mean"
    assert json.loads((tmp_path / "mean" / "metrics.json").read_text())["onnx_max_abs_diff"] < 1e-4


def test_pooling_is_refused_for_hf_bert(glue_dir, tiny_teacher_dir, tmp_path, capsys):
    assert main(["finetune", tiny_teacher_dir, "--task", "sst2", "--data-dir", str(glue_dir), "--pooling", "mean",
                 "--out", str(tmp_path / "ft"), "--no-progress"]) == 1
    assert "--pooling applies to nasbert models" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()


def test_bi_encoder_reads_each_text_apart_and_classifies_u_v_diff_product(glue_dir, student_dir):
    task = load_task("rte", data_dir=glue_dir)
    model, _, _ = load_classifier(student_dir, task.task, seed=0, pair_encoding="bi")
    assert model.config.pair_encoding == "bi" and not hasattr(model, "pooler")
    assert model.classifier.in_features == 4 * model.config.hidden_size
    a = torch.tensor([[2, 20, 21, 3, 0, 0], [2, 22, 23, 24, 25, 3]])
    b = torch.tensor([[2, 26, 27, 28, 3], [2, 29, 3, 0, 0]])
    mask_a, mask_b = (a != 0).long(), (b != 0).long()
    model.eval()
    with torch.no_grad():
        padded = model(input_ids=a, attention_mask=mask_a, input_ids_b=b, attention_mask_b=mask_b).logits
        alone = model(input_ids=a[:1, :4], input_ids_b=b[:1]).logits  # no padding: the same logits
        u = model.nasbert(a[:1, :4]).last_hidden_state.mean(1)
        v = model.nasbert(b[:1]).last_hidden_state.mean(1)
        by_hand = model.classifier(torch.cat([u, v, (u - v).abs(), u * v], -1))
        swapped = model(input_ids=b[:1], input_ids_b=a[:1, :4]).logits
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, by_hand, atol=1e-5, rtol=0)
    assert not torch.allclose(alone, swapped, atol=1e-4)  # u and v keep their places
    with pytest.raises(ValueError, match="input_ids_b"):
        model(input_ids=a, attention_mask=mask_a)


def test_bi_encoder_learns_a_pair_task_and_exports_a_two_input_graph(glue_dir, student_dir, tmp_path, capsys):
    import onnxruntime as ort

    from nasbert.finetune.trainer import TEACHER_LOGITS, encode_examples, predict, predict_onnx

    task = load_task("rte", data_dir=glue_dir)
    common = ["--task", "rte", "--data-dir", str(glue_dir), "--lr", "3e-3", "--batch-size", "16", "--max-seq-len",
              "32", "--no-progress", "--json"]
    # Both encodings at one rate: a grid of two points, and the one that reads the texts apart wins.
    assert main(["finetune", student_dir, *common, "--epochs", "16", "--pair-encoding", "cross", "bi",
                 "--out", str(tmp_path / "grid")]) == 0
    bi = json.loads(capsys.readouterr().out)
    assert bi["dev"]["accuracy"] >= 0.85  # chance is 0.5: the label needs both texts
    assert bi["pair_encoding"] == "bi" and bi["lr_grid"]["0.003-bi"] == bi["dev"]["accuracy"]
    assert bi["lr_grid"].keys() == {"0.003", "0.003-bi"} and bi["lr_grid"]["0.003"] < bi["dev"]["accuracy"]
    grid = json.loads((tmp_path / "grid" / "lr_grid.json").read_text())
    assert grid["pair_encodings"] == ["cross", "bi"] and grid["model"] == "lr-0.003-bi/model"
    assert bi["model"] == str(tmp_path / "grid" / "lr-0.003-bi" / "model")
    model_dir = tmp_path / "grid" / "lr-0.003-bi" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert model.config.pair_encoding == "bi"
    tok = AutoTokenizer.from_pretrained(model_dir)
    dev = encode_examples(task.dev, tok, max_seq_len=32, regression=False, pair_encoding="bi")
    assert max(len(x) for x in dev.input_ids + dev.input_ids_b) <= 16  # each text gets half the length
    logits = predict(model, dev, batch_size=8, pad_id=0)
    assert float((logits.argmax(-1) == dev.labels).mean()) == pytest.approx(bi["dev"]["accuracy"])
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert {"input_ids_b", "attention_mask_b"} <= {i.name for i in session.get_inputs()}
    np.testing.assert_allclose(predict_onnx(model_dir / "model.onnx", dev, batch_size=8, pad_id=0), logits,
                               atol=1e-4)
    assert json.loads((model_dir.parent / "metrics.json").read_text())["int8"]["dev_fp32_onnx"]["accuracy"] == \
        pytest.approx(bi["dev"]["accuracy"])
    # Distilled from a cross-encoder: the teacher reads the pairs its own way.
    cross_dir = tmp_path / "grid" / "lr-0.003" / "model"
    assert AutoModelForSequenceClassification.from_pretrained(cross_dir).config.pair_encoding == "cross"
    assert main(["finetune", student_dir, *common, "--pair-encoding", "bi", "--kd-teacher", str(cross_dir),
                 "--epochs", "1", "--no-onnx", "--out", str(tmp_path / "kd")]) == 0
    capsys.readouterr()
    teacher = AutoModelForSequenceClassification.from_pretrained(cross_dir)
    train = encode_examples(task.train, tok, max_seq_len=32, regression=False)
    saved = torch.load(tmp_path / "kd" / TEACHER_LOGITS)
    np.testing.assert_allclose(saved.numpy(), predict(teacher, train, batch_size=32, pad_id=0), atol=1e-5)


@pytest.mark.parametrize("model, task, message", [
    ("student", "sst2", "has one"),
    ("teacher", "rte", "applies to nasbert models"),
])
def test_bi_encoding_is_refused_where_it_cannot_apply(model, task, message, glue_dir, student_dir, tiny_teacher_dir,
                                                      tmp_path, capsys):
    path = student_dir if model == "student" else tiny_teacher_dir
    out = tmp_path / "ft"
    assert main(["finetune", path, "--task", task, "--data-dir", str(glue_dir), "--pair-encoding", "bi",
                 "--out", str(out), "--no-progress"]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
