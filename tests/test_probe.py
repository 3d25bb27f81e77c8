"""The probe (a short fine-tune on a sentence-pair task) and the search's starting points among a budget's candidates."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from nasbert import Arch, SearchSpace, SuperNet
from nasbert.budgets import parse_budgets
from nasbert.finetune import FinetuneConfig, finetune
from nasbert.finetune.tasks import TaskError
from nasbert.finetune.trainer import FinetuneError
from nasbert.search.objective import Evaluation
from nasbert.search.optuna_search import TrialRecord, select_per_budget
from nasbert.search.probe import BUILTIN_PROBE, PROBE_TEST, PROBE_TRAIN, Probe, ProbeSettings, load_probe, \
    weights_digest, write_builtin_probe


def test_the_builtin_probe_is_qnli_pairs_split_without_overlap():
    task = load_probe()
    assert task.task.name == "qnli" and len(task.train) == PROBE_TRAIN and len(task.dev) == PROBE_TEST
    assert all(e.text_b and e.label in (0, 1) for e in task.train + task.dev)
    assert not {(e.text_a, e.text_b) for e in task.train} & {(e.text_a, e.text_b) for e in task.dev}
    assert 0.4 < sum(e.label for e in task.dev) / len(task.dev) < 0.6  # near-balanced: chance is 50%
    smaller = load_probe(train=10, test=5)
    assert smaller.train == task.train[:10] and smaller.dev == task.dev[:5]
    with pytest.raises(TaskError, match="at least one training and one test row"):
        load_probe(train=0)
    with pytest.raises(TaskError, match="train \\+ test must not exceed"):
        load_probe(train=PROBE_TRAIN, test=PROBE_TRAIN)


def test_write_builtin_probe_makes_the_shipped_file(tmp_path):
    import gzip

    rows = gzip.decompress(BUILTIN_PROBE.read_bytes()).decode("utf-8").splitlines()
    source = tmp_path / "dev.tsv"
    source.write_text("\n".join(rows + ["99999\tWhy?\tBecause.\tentailment"]) + "\n", encoding="utf-8")
    written = write_builtin_probe(source, tmp_path / "probe.tsv.gz").read_bytes()
    # the same rows (the compressed bytes depend on the zlib build), and no timestamp in the header
    assert gzip.decompress(written) == gzip.decompress(BUILTIN_PROBE.read_bytes()) and written[4:8] == b"\0\0\0\0"
    source.write_text("\n".join(rows[:10]) + "\n", encoding="utf-8")
    with pytest.raises(TaskError, match="at least 3000 rows"):
        write_builtin_probe(source, tmp_path / "short.tsv.gz")


def _tiny_model(tiny_space, tiny_teacher_dir):
    space = SearchSpace.elastic_for(tiny_space.teacher)
    source = SuperNet.from_teacher(space, tiny_teacher_dir, reorder="units").eval()
    return source.extract(space.layer_dropped(1), drop_identity_adapters=True)


def test_probe_score_is_the_fine_tuned_accuracy_and_is_not_trained_twice(tiny_space, tiny_teacher_dir, tmp_path):
    model = _tiny_model(tiny_space, tiny_teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    task = load_probe(train=48, test=32)
    settings = ProbeSettings(epochs=1.0, max_seq_len=32, batch_size=16)
    probe = Probe(task, work_dir=tmp_path / "probe", settings=settings)
    score = probe.score(model, tokenizer, name="m")
    folder = tmp_path / "probe" / f"m-{weights_digest(model)}"
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    assert score == pytest.approx(100 * metrics["dev"]["accuracy"]) and metrics["dev_examples"] == 32
    # the same recipe by hand gives the same score
    by_hand = finetune(folder / "model", task, out=tmp_path / "by-hand", onnx=False, progress=False, device="cpu",
                       config=FinetuneConfig(epochs=1.0, batch_size=16, lr=settings.lr, max_seq_len=32, seed=0,
                                             pooling="mean"))
    assert 100 * by_hand.metrics["accuracy"] == pytest.approx(score)
    mtime = (folder / "run" / "metrics.json").stat().st_mtime_ns
    assert probe.score(model, tokenizer, name="m") == score
    assert (folder / "run" / "metrics.json").stat().st_mtime_ns == mtime  # read back, not trained again
    # a run of the same recipe that evaluated after every epoch (as probes once did) is read back too: same score
    shutil.rmtree(folder / "run")
    shutil.copytree(tmp_path / "by-hand", folder / "run")
    assert probe.score(model, tokenizer, name="m") == pytest.approx(score)
    assert (folder / "run" / "finetune.json").read_text() == (tmp_path / "by-hand" / "finetune.json").read_text()
    # another recipe is not read back: its fine-tune finds the run of this one and refuses to mix them
    other = Probe(task, work_dir=tmp_path / "probe", settings=dataclasses.replace(settings, lr=2 * settings.lr))
    with pytest.raises(FinetuneError, match="other settings"):
        other.score(model, tokenizer, name="m")
    with torch.no_grad():  # other weights: another run
        next(model.parameters()).add_(1.0)
    assert weights_digest(model) != folder.name.rpartition("-")[2]


def _record(number: int, arch: str, loss: float, ms: float, enqueued: bool = False) -> TrialRecord:
    return TrialRecord(number, Arch.parse(arch), Evaluation(proxy_loss=loss, latency_ms=ms, params=1000, flops=1),
                       enqueued=enqueued)


def test_a_budgets_candidates_are_its_best_trials_then_its_best_starting_points():
    a, b, c, d, e = ("64:mha,ffn", "64:mha,identity", "64:identity,ffn", "64:ffn,identity", "64:identity,identity")
    records = [_record(0, a, 0.5, 5.0, enqueued=True), _record(1, b, 0.1, 4.0), _record(2, c, 0.2, 4.0),
               _record(3, d, 0.7, 3.0, enqueued=True), _record(4, e, 0.9, 2.0, enqueued=True),
               _record(5, b, 0.1, 4.0)]  # a repeat of trial 1
    budgets = parse_budgets(["2x"])  # teacher 10 ms: at most 5 ms
    chosen = select_per_budget(records, budgets, 10.0, top_k=2, starting_k=2)["2x"]
    assert [r.number for r in chosen] == [1, 2, 0, 3]
    assert [r.number for r in select_per_budget(records, budgets, 10.0, top_k=2)["2x"]] == [1, 2]
    # a starting point among the best trials is not counted twice
    chosen = select_per_budget(records, budgets, 10.0, top_k=3, starting_k=1)["2x"]
    assert [r.number for r in chosen] == [1, 2, 0, 3]
    tight = select_per_budget(records, parse_budgets(["4x"]), 10.0, top_k=1, starting_k=5)["4x"]  # <= 2.5 ms
    assert [r.number for r in tight] == [4]
