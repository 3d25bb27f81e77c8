"""The teacher-state cache: it gives what the teacher gives, is reused across processes, changes with the
teacher, corpus, sequence length and masking, and never serves a half-written row."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from nasbert import Arch, SuperNet
from nasbert.training import BlockwiseTrainer, ShrinkConfig, TrainConfig
from nasbert.training.blockwise import block_batches
from nasbert.training.teacher_cache import TeacherStateCache

from test_training import corpus, tokenizer  # noqa: F401 (the same tiny corpus fixtures)


class Counting(torch.nn.Module):
    """The teacher, counting the sequences it is run on."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.sequences = teacher, 0

    def forward(self, **kwargs):
        self.sequences += kwargs["input_ids"].shape[0]
        return self.teacher(**kwargs)


def _cache(root, teacher, space, train, tokenizer, **overrides):
    settings = dict(mlm_probability=0.15, seed=0, mask_token_id=tokenizer.mask_token_id,
                    special_ids=tokenizer.all_special_ids, vocab_size=space.teacher.vocab_size)
    return TeacherStateCache(root, teacher, space, train, **{**settings, **overrides})


def test_cached_states_are_the_teachers_and_are_reused_by_a_new_process(tiny_teacher, tiny_space, corpus, tokenizer,
                                                                         tmp_path):
    teacher = Counting(tiny_teacher).eval()
    cache = _cache(tmp_path, teacher, tiny_space, corpus.train, tokenizer)
    rows = [3, 0, 3, 5]
    got = cache.batches(rows)
    assert teacher.sequences == 3 and (cache.hits, cache.misses) == (1, 3)  # row 3 twice in one batch: run once
    ids = cache.ids[rows]
    assert not torch.equal(ids, corpus.train[rows])  # the input is masked ...
    assert torch.equal(ids[0], ids[2])  # ... once per sequence
    want = block_batches(tiny_teacher, tiny_space, ids, torch.ones_like(ids))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.inputs, w.inputs, atol=2e-3, rtol=2e-3)  # fp16 on disk
        torch.testing.assert_close(g.target, w.target, atol=2e-3, rtol=2e-3)
        assert torch.equal(g.attention_mask, w.attention_mask)
    cache.batches([0, 5])
    assert teacher.sequences == 3
    # another process (a new object on the same root) reads the rows already there
    again = _cache(tmp_path, teacher, tiny_space, corpus.train, tokenizer)
    assert again.path == cache.path
    again.batches([0, 3, 7])
    assert teacher.sequences == 4 and (again.hits, again.misses) == (2, 1)


def test_a_change_of_teacher_corpus_length_or_masking_is_another_cache(tiny_teacher, tiny_space, corpus, tokenizer,
                                                                       tmp_path):
    base = _cache(tmp_path, tiny_teacher, tiny_space, corpus.train, tokenizer).path
    other = copy.deepcopy(tiny_teacher)
    with torch.no_grad():
        other.encoder.layer[0].output.dense.bias.add_(1e-3)
    paths = {
        "teacher": _cache(tmp_path, other, tiny_space, corpus.train, tokenizer).path,
        "corpus": _cache(tmp_path, tiny_teacher, tiny_space, corpus.train.flip(0), tokenizer).path,
        "length": _cache(tmp_path, tiny_teacher, tiny_space, corpus.train[:, :24], tokenizer).path,
        "masking": _cache(tmp_path, tiny_teacher, tiny_space, corpus.train, tokenizer, mlm_probability=0.3).path,
        "seed": _cache(tmp_path, tiny_teacher, tiny_space, corpus.train, tokenizer, seed=1).path,
    }
    assert len({base, *paths.values()}) == 6
    assert _cache(tmp_path, tiny_teacher, tiny_space, corpus.train, tokenizer).path == base


def test_rows_written_by_a_killed_process_are_computed_again(tiny_teacher, tiny_space, corpus, tokenizer, tmp_path,
                                                             monkeypatch):
    import nasbert.training.teacher_cache as module

    cache = _cache(tmp_path, tiny_teacher, tiny_space, corpus.train, tokenizer)
    cache.batches([1])

    def killed(path, data):  # the states are written, the process dies before filled.npy is replaced
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "atomic_write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.batches([2])
    monkeypatch.undo()
    teacher = Counting(tiny_teacher).eval()
    again = _cache(tmp_path, teacher, tiny_space, corpus.train, tokenizer)
    assert list(np.flatnonzero(again.filled)) == [1]
    again.batches([1, 2])
    assert teacher.sequences == 1 and not list(tmp_path.glob("*/.*.tmp"))


def test_training_with_the_cache_skips_the_teacher_after_the_first_epoch(tiny_teacher, tiny_space, corpus,
                                                                         tokenizer, tmp_path):
    config = TrainConfig(steps=12, batch_size=4, eval_every=0, eval_batches=1, eval_paths=2, checkpoint_every=6,
                         threads=1, teacher_cache=True, shrink=ShrinkConfig(enabled=False))
    corpus = dataclasses.replace(corpus, train=corpus.train[:16])  # 12 steps of 4: three epochs
    results = []
    for run in range(2):
        teacher = Counting(tiny_teacher).eval()
        supernet = SuperNet.from_teacher(tiny_space, tiny_teacher)
        trainer = BlockwiseTrainer(supernet, teacher, corpus, config, tokenizer=tokenizer,
                                   workdir=tmp_path / f"run{run}", show_progress=False, cache_root=tmp_path / "cache")
        before = teacher.sequences  # the validation batches
        result = trainer.train()
        results.append((result, teacher.sequences - before, trainer.supernet.state_dict()))
    n = corpus.train.shape[0]
    (first, first_calls, first_state), (second, second_calls, second_state) = results
    assert first_calls == first["teacher_cache"]["misses"] == n  # 48 draws of 16 sequences: each run once
    assert first["teacher_cache"]["hits"] == 12 * 4 - n
    assert second_calls == 0 and second["teacher_cache"] == {**first["teacher_cache"], "hits": 48, "misses": 0}
    for key in first_state:  # the same training either way
        assert torch.equal(first_state[key], second_state[key]), key


def test_distillation_reads_the_cache(tiny_teacher, tiny_space, corpus, tokenizer, tmp_path):
    from nasbert.training.distill import DistillConfig, distill_arch

    teacher = Counting(tiny_teacher).eval()
    cache = _cache(tmp_path, teacher, tiny_space, corpus.train, tokenizer)
    cache.batches(list(range(corpus.train.shape[0])))  # every row cached, as after training
    supernet = SuperNet.from_teacher(tiny_space, tiny_teacher).eval()
    arch = Arch.parse("24:sepconv5,mha,ffn,identity|16:ffn,sepconv3,mha,sepconv7")
    config = DistillConfig(steps=6, batch_size=4, lr=1e-3, warmup_steps=1, eval_batches=1, threads=1)
    calls = teacher.sequences
    result = distill_arch(supernet, arch, teacher, corpus, tokenizer, config=config, seed=0, progress=False,
                          teacher_cache=cache)
    # only the validation batches ran the teacher (before and after); the 6 training batches came from disk
    assert teacher.sequences - calls == 2 * 4 and cache.hits >= 6 * 4
    assert result.valid_loss_after < result.valid_loss_before
