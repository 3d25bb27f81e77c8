"""Run directories travel between machines: a file in one that would run code when unpickled is refused."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from nasbert import SuperNet
from nasbert.data import CorpusConfig, load_corpus
from nasbert.finetune import get_task
from nasbert.finetune.tasks import Example, TaskData
from nasbert.finetune.trainer import FinetuneConfig, FinetuneError, _neighbours, _teacher_logits, finetune
from nasbert.training import BlockwiseTrainer, ShrinkConfig, TrainConfig


class Payload:
    """Unpickling this creates the file ``marker``, as a planted file would run any code it likes."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path, marker) -> None:
    torch.save({"learners": [Payload(marker)], "model": Payload(marker), "train": Payload(marker)}, path)


def test_planted_training_checkpoint_is_not_unpickled(tiny_space, tiny_teacher, tiny_teacher_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    corpus = load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer, cache_dir=tmp_path / "cache",
                         show_progress=False)
    config = TrainConfig(steps=4, batch_size=4, warmup_steps=1, eval_every=0, eval_batches=1, eval_paths=2,
                         checkpoint_every=2, shrink=ShrinkConfig(bins=2, samples_per_bin=2, keep_per_bin=1,
                                                                 warmup_steps=10, eval_batches=1))

    def trainer():
        return BlockwiseTrainer(SuperNet.from_teacher(tiny_space, tiny_teacher), tiny_teacher, corpus, config,
                                tokenizer=tokenizer, workdir=tmp_path / "train", seed=0, show_progress=False)

    assert trainer().train(stop_after=2) is None
    plant(tmp_path / "train" / "checkpoint" / "optimizer.pt", tmp_path / "marker")
    with pytest.raises(pickle.UnpicklingError):
        trainer().train()
    assert not (tmp_path / "marker").exists()


@pytest.fixture
def task():
    train = [Example(f"the value {'is' if i % 2 else 'of'} a name", None, i % 2) for i in range(16)]
    return TaskData(get_task("sst2"), train, train[:4], source="here")


def test_planted_finetune_checkpoint_is_not_unpickled(tiny_teacher_dir, task, tmp_path):
    config = FinetuneConfig(epochs=1, batch_size=8, max_seq_len=8)
    assert finetune(tiny_teacher_dir, task, out=tmp_path / "ft", config=config, onnx=False, progress=False,
                    stop_after=1) is None
    plant(tmp_path / "ft" / "checkpoint.pt", tmp_path / "marker")
    with pytest.raises(FinetuneError, match="checkpoint.pt.*not loaded.*delete it"):
        finetune(tiny_teacher_dir, task, out=tmp_path / "ft", config=config, onnx=False, progress=False)
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("name", ["neighbours.pt", "teacher_logits.pt"])
def test_planted_finetune_cache_is_not_unpickled(name, task, tmp_path):
    plant(tmp_path / name, tmp_path / "marker")
    with pytest.raises(FinetuneError, match=f"{name}.*not loaded.*delete it"):
        if name == "neighbours.pt":
            _neighbours(None, task, None, tmp_path, False)
        else:
            _teacher_logits("unused", task, None, None, FinetuneConfig(), tmp_path, False)
    assert not (tmp_path / "marker").exists()


class FakePool:
    """Retrieval stand-in: every example's reference is its own row, with similarity 0.5."""

    meta = {"sha256": "abc"}
    max_length = 8

    def retrieve(self, ids, mask, exclude=None):
        return SimpleNamespace(indices=np.arange(len(ids)), scores=np.full(len(ids), 0.5))


def test_neighbours_cache_holds_only_tensors_and_is_read_back(task, tiny_teacher_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    computed = _neighbours(FakePool(), task, tokenizer, tmp_path, False)
    saved = torch.load(tmp_path / "neighbours.pt", weights_only=True)
    assert saved["pool_sha256"] == "abc" and isinstance(saved["train"], torch.Tensor)
    cached = _neighbours(FakePool(), task, None, tmp_path, False)  # no tokenizer: only the cache can answer
    for key in ("train", "dev", "train_similarity", "dev_similarity"):
        assert isinstance(cached[key], np.ndarray)
        np.testing.assert_array_equal(cached[key], computed[key])
