"""torch's thread count is process-wide: every nasbert call that sets it gives the caller's count back."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from nasbert import SuperNet
from nasbert.data import CorpusConfig, load_corpus
from nasbert.finetune import get_task
from nasbert.finetune.tasks import Example, TaskData
from nasbert.finetune.trainer import FinetuneConfig, finetune
from nasbert.latency import LatencyConfig, profile_device
from nasbert.training import BlockwiseTrainer, ShrinkConfig, TrainConfig
from nasbert.utils import torch_threads


@pytest.fixture(autouse=True)
def two_threads():
    """The caller's count: 2, so that a call run with 1 thread that forgets to give it back shows."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_torch_threads_sets_and_gives_back_even_on_error():
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with torch_threads(0), torch_threads(None):
        assert torch.get_num_threads() == 2
    with pytest.raises(KeyError), torch_threads(1):
        raise KeyError
    assert torch.get_num_threads() == 2


def test_training_runs_on_its_threads_and_gives_them_back(tiny_space, tiny_teacher, tiny_teacher_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    corpus = load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer, cache_dir=tmp_path / "cache",
                         show_progress=False)
    config = TrainConfig(steps=2, batch_size=4, warmup_steps=1, eval_every=0, eval_batches=1, eval_paths=2,
                         threads=1, shrink=ShrinkConfig(bins=2, samples_per_bin=2, keep_per_bin=1, warmup_steps=10,
                                                        eval_batches=1))
    trainer = BlockwiseTrainer(SuperNet.from_teacher(tiny_space, tiny_teacher), tiny_teacher, corpus, config,
                               tokenizer=tokenizer, workdir=tmp_path / "train", seed=0, show_progress=False)
    assert torch.get_num_threads() == 2
    seen, step = [], trainer.train_step
    trainer.train_step = lambda: seen.append(torch.get_num_threads()) or step()
    assert trainer.train()["steps"] == 2
    assert seen == [1, 1] and torch.get_num_threads() == 2


def test_finetuning_gives_the_threads_back(tiny_teacher_dir, tmp_path):
    train = [Example(f"the value {'is' if i % 2 else 'of'} a name", None, i % 2) for i in range(16)]
    task = TaskData(get_task("sst2"), train, train[:4], source="here")
    finetune(tiny_teacher_dir, task, out=tmp_path / "ft", config=FinetuneConfig(epochs=1, batch_size=8,
             max_seq_len=8, threads=1), onnx=False, progress=False)
    assert torch.get_num_threads() == 2


def test_latency_profile_gives_the_threads_back(tiny_space, tmp_path):
    config = LatencyConfig(engine="torch", threads=1, archs=4, seq_len=8, repeats=1, rounds=1, warmup=0,
                           table_repeats=1, group_size=4)
    profile_device(tiny_space, tmp_path / "profile", config=config, show_progress=False)
    assert torch.get_num_threads() == 2
