"""The CUDA paths: training on a GPU resumes exactly, timing and distillation leave the caller's modules alone.

Skipped where torch sees no GPU (the default CI machine); run them on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from nasbert import SuperNet
from nasbert.training import BlockwiseTrainer, ShrinkConfig, TrainConfig

from test_finetune import glue_dir, student_dir  # noqa: F401 (the same tiny task and student)
from test_training import corpus, tokenizer  # noqa: F401 (the same tiny corpus fixtures)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: these tests need a GPU")


@pytest.fixture
def deterministic():
    """cuBLAS and the scatter kernels of embedding backward are deterministic only when asked."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def _config() -> TrainConfig:
    shrink = ShrinkConfig(bins=4, samples_per_bin=8, keep_per_bin=2, warmup_steps=4, steps_between_rounds=3,
                          max_rounds=2, eval_batches=1)
    return TrainConfig(steps=10, batch_size=4, lr=1e-3, warmup_steps=2, eval_every=5, eval_batches=1,
                       eval_paths=4, checkpoint_every=3, shrink=shrink, device="cuda")


def _trainer(tiny_space, tiny_teacher, corpus, tokenizer, workdir) -> BlockwiseTrainer:
    net = SuperNet.from_teacher(tiny_space, tiny_teacher)
    return BlockwiseTrainer(net, tiny_teacher, corpus, _config(), tokenizer=tokenizer, workdir=workdir,
                            show_progress=False)


def test_training_on_cuda_resumes_to_the_same_weights(tiny_space, tiny_teacher, corpus, tokenizer, tmp_path,
                                                      deterministic):
    straight = _trainer(tiny_space, tiny_teacher, corpus, tokenizer, tmp_path / "straight")
    straight.train()
    first = _trainer(tiny_space, tiny_teacher, corpus, tokenizer, tmp_path / "resumed")
    assert first.train(stop_after=4) is None
    resumed = _trainer(tiny_space, tiny_teacher, corpus, tokenizer, tmp_path / "resumed")
    summary = resumed.train()
    assert summary["resumed_at"] == 4
    want, got = straight.supernet.state_dict(), resumed.supernet.state_dict()
    assert next(resumed.supernet.parameters()).device.type == "cuda"
    for name in want:  # dropout draws from the GPU's generator: it is checkpointed too
        assert torch.equal(want[name], got[name]), name


def test_timing_on_cuda_leaves_the_callers_module_on_the_cpu(tiny_space, tiny_teacher):
    from nasbert.latency.measure import TorchEngine

    model = SuperNet.from_teacher(tiny_space, tiny_teacher).extract(tiny_space.teacher_arch()).eval()
    ids = torch.randint(5, 99, (1, 16))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    engine = TorchEngine(model, feeds, threads=1, device="cuda")
    engine()
    assert next(model.parameters()).device.type == "cpu"
    with torch.no_grad():  # so an ONNX export right after still runs it on CPU inputs
        model(**feeds)


def test_onnx_runtime_on_cuda_runs_there_or_says_why(tiny_space, tiny_teacher, tmp_path):
    from nasbert.onnxio import export_onnx
    from nasbert.latency.measure import OnnxRuntimeEngine

    model = SuperNet.from_teacher(tiny_space, tiny_teacher).extract(tiny_space.teacher_arch()).eval()
    export_onnx(model, tmp_path / "m.onnx")
    ids = np.random.default_rng(0).integers(5, 99, (1, 16))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    try:
        engine = OnnxRuntimeEngine(tmp_path / "m.onnx", feeds, threads=1, device="cuda")
    except RuntimeError as e:  # a CPU-only onnxruntime build: refused, never silently timed on the CPU
        assert "CUDAExecutionProvider" in str(e)
        return
    assert engine.session.get_providers()[0] == "CUDAExecutionProvider"
    engine()


def test_distillation_on_cuda_leaves_the_supernet_as_it_was(tiny_space, tiny_teacher, corpus, tokenizer):
    from nasbert.training.distill import DistillConfig, distill_arch

    net = SuperNet.from_teacher(tiny_space, tiny_teacher).cuda()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    arch = tiny_space.sample(np.random.default_rng(0))
    result = distill_arch(net, arch, tiny_teacher.cuda(), corpus, tokenizer,
                          config=DistillConfig(steps=4, batch_size=4, eval_batches=1), seed=0, progress=False)
    assert result.valid_loss_after <= result.valid_loss_before * 1.5
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    tiny_teacher.cpu()


def test_teacher_cache_on_cuda_gives_the_teachers_states_and_trains(tiny_space, tiny_teacher, corpus, tokenizer,
                                                                    tmp_path, deterministic):
    from nasbert.training.blockwise import block_batches
    from nasbert.training.teacher_cache import TeacherStateCache

    teacher = tiny_teacher.to("cuda").eval()
    try:
        cache = TeacherStateCache(tmp_path / "cache", teacher, tiny_space, corpus.train, mlm_probability=0.15,
                                  seed=0, mask_token_id=tokenizer.mask_token_id,
                                  special_ids=tokenizer.all_special_ids, vocab_size=tiny_space.teacher.vocab_size,
                                  device="cuda")
        got = cache.batches([4, 1])
        ids = cache.ids[[4, 1]].to("cuda")
        want = block_batches(teacher, tiny_space, ids, torch.ones_like(ids))
        for g, w in zip(got, want):
            assert g.target.device.type == "cuda"
            torch.testing.assert_close(g.target, w.target, atol=2e-3, rtol=2e-3)
        config = dataclasses.replace(_config(), teacher_cache=True)
        trainer = BlockwiseTrainer(SuperNet.from_teacher(tiny_space, tiny_teacher), tiny_teacher, corpus, config,
                                   tokenizer=tokenizer, workdir=tmp_path / "run", show_progress=False,
                                   cache_root=tmp_path / "cache")
        result = trainer.train()
        assert result["teacher_cache"]["hits"] + result["teacher_cache"]["misses"] == 10 * 4
        assert np.isfinite(result["valid_loss"])
    finally:
        tiny_teacher.to("cpu")


def test_finetuning_on_cuda_resumes_exactly_and_writes_a_model_for_the_cpu(glue_dir, student_dir, tmp_path,
                                                                           deterministic):
    from transformers import AutoModelForSequenceClassification

    from nasbert.finetune import FinetuneConfig, compute_metrics, finetune, load_task
    from nasbert.finetune.trainer import encode_examples, predict

    from test_finetune import FAST

    task = load_task("sst2", data_dir=glue_dir)
    config = FinetuneConfig(**{**FAST, "epochs": 1.5})
    straight = finetune(student_dir, task, out=tmp_path / "a", config=config, progress=False, device="cuda")
    metrics = json.loads((straight.out / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda")
    assert finetune(student_dir, task, out=tmp_path / "b", config=config, onnx=False, progress=False,
                    stop_after=7, device="cuda") is None
    resumed = finetune(student_dir, task, out=tmp_path / "b", config=config, onnx=False, progress=False,
                       device="cuda")
    assert resumed.resumed and resumed.steps == straight.steps
    assert resumed.metrics == straight.metrics  # dropout draws from the GPU's generator: it is checkpointed too
    # a run stopped on the GPU goes on on the CPU
    assert finetune(student_dir, task, out=tmp_path / "c", config=config, onnx=False, progress=False,
                    stop_after=7, device="cuda") is None
    moved = finetune(student_dir, task, out=tmp_path / "c", config=config, onnx=False, progress=False, device="cpu")
    assert moved.steps == straight.steps
    assert json.loads((moved.out / "metrics.json").read_text())["device"] == "cpu"
    # the written model is a CPU model and scores on the CPU what the GPU measured
    model = AutoModelForSequenceClassification.from_pretrained(straight.model_dir)
    assert next(model.parameters()).device.type == "cpu"
    words = AutoTokenizer.from_pretrained(straight.model_dir)
    dev = encode_examples(task.dev, words, max_seq_len=FAST["max_seq_len"], regression=False)
    got = compute_metrics(task.task, predict(model, dev, batch_size=64, pad_id=words.pad_token_id or 0), dev.labels)
    assert abs(got["accuracy"] - straight.metrics["accuracy"]) <= 1 / len(task.dev)
    assert metrics["int8"] is not None  # the ONNX graphs were exported and scored on the CPU
