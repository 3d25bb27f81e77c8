"""Progressive knowledge transfer (MobileBERT) as a training mode: stages, frozen blocks, attention KL, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from nasbert import Arch, SearchSpace, SuperNet
from nasbert.config import ConfigError
from nasbert.data import CorpusConfig, load_corpus
from nasbert.training import BlockwiseTrainer, ShrinkConfig, TrainConfig
from nasbert.training.progressive import (ProgressiveSchedule, attention_kl, stage_loss, teacher_targets,
                                          whole_model_loss)


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher_dir):
    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


@pytest.fixture(scope="module")
def corpus(tokenizer, tmp_path_factory):
    return load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer,
                       cache_dir=tmp_path_factory.mktemp("cache"), show_progress=False)


@pytest.fixture(scope="module")
def mobile_space(tiny_space) -> SearchSpace:
    data = tiny_space.to_dict()
    data.update(ops=["mha", "ffn", "sepconv3", "bottleneck8x1", "bottleneck16x2", "identity"], bottleneck_head_size=8)
    return SearchSpace.from_dict(data)


def progressive_config(**overrides) -> TrainConfig:
    base = dict(steps=8, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=0, eval_batches=1, eval_paths=2,
                checkpoint_every=5, mode="progressive", progressive_final_fraction=0.25,
                shrink=ShrinkConfig(enabled=False))
    base.update(overrides)
    return TrainConfig(**base)


def test_schedule_gives_every_block_the_same_number_of_updates():
    s = ProgressiveSchedule(num_blocks=3, steps=8, final_fraction=0.25)
    assert (s.stage_steps, s.final_steps, s.total_steps) == (6, 2, 20)
    stages = [s.stage(i) for i in range(s.total_steps)]
    assert stages == [0] * 6 + [1] * 6 + [2] * 6 + [None] * 2
    for block in range(3):
        assert stages.count(block) + stages.count(None) == s.updates_per_block == 8  # as block-wise's steps = 8


def test_config_is_validated():
    with pytest.raises(ConfigError, match="train.mode must be one of blockwise, progressive"):
        TrainConfig(mode="layerwise")
    with pytest.raises(ConfigError, match="set train.shrink.enabled: false"):
        TrainConfig(mode="progressive")
    with pytest.raises(ConfigError, match="progressive_final_fraction"):
        progressive_config(progressive_final_fraction=1.0)


def test_attention_kl_by_hand():
    teacher = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]])  # (B=1, T=2, T=2)
    student = torch.tensor([[[[0.25, 0.75], [0.9, 0.1]], [[0.75, 0.25], [0.9, 0.1]]]])  # 2 heads: mean is teacher
    assert float(attention_kl(student, teacher, torch.ones(1, 2))) == pytest.approx(0.0, abs=1e-7)
    other = torch.tensor([[[[0.2, 0.8], [0.5, 0.5]]]])
    expected = (0.5 * np.log(0.5 / 0.2) + 0.5 * np.log(0.5 / 0.8)) / 1  # only the first query is real
    assert float(attention_kl(other, teacher, torch.tensor([[1, 0]]))) == pytest.approx(expected, rel=1e-5)


def test_supernet_reports_the_attention_it_computes(mobile_space, tiny_teacher):
    """The teacher architecture's attention distributions are the teacher's own (the supernet starts as it)."""
    net = SuperNet.from_teacher(SearchSpace.load("tiny"), tiny_teacher).eval()
    ids = torch.randint(5, 99, (2, 9))
    mask = torch.ones_like(ids)
    targets = teacher_targets(tiny_teacher, net.space, ids, mask)
    probs: list = []
    with torch.no_grad():
        net(ids, mask, arch=net.space.teacher_arch(), attention_probs=probs)
    assert [slot for slot, _ in probs] == [0, 2, 4, 6]
    for slot, p in probs:
        torch.testing.assert_close(p.mean(1), targets.attention[slot // 2], atol=1e-5, rtol=0)
    # bottleneck ops report theirs too (heads of bottleneck_head_size)
    mobile = SuperNet.from_teacher(mobile_space, tiny_teacher).eval()
    probs = []
    arch = Arch.parse("32:bottleneck16x2,ffn,identity,identity|16:bottleneck8x1,mha,identity,identity")
    with torch.no_grad():
        mobile(ids, mask, arch=arch, attention_probs=probs)
    assert [(slot, p.shape[1]) for slot, p in probs] == [(0, 2), (4, 1), (5, 2)]
    torch.testing.assert_close(probs[0][1].sum(-1), torch.ones(2, 2, 9))


def test_stage_trains_only_its_block_on_the_students_own_earlier_blocks(mobile_space, tiny_teacher):
    net = SuperNet.from_teacher(mobile_space, tiny_teacher).train()
    ids = torch.randint(5, 99, (2, 9))
    targets = teacher_targets(tiny_teacher, mobile_space, ids, torch.ones_like(ids))
    paths = Arch.parse("24:bottleneck16x2,sepconv3,identity,identity|16:mha,bottleneck8x1,ffn,identity").blocks
    loss, mse, kl = stage_loss(net, 1, paths, ids, targets, attention_weight=1.0)
    assert loss.item() == pytest.approx(mse + kl, rel=1e-5) and kl > 0
    loss.backward()
    trained = {name for name, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    block1 = {name for name, _ in net.block_parameters(1)}
    assert trained and trained <= block1  # block 0 is frozen
    # its input is the student's block 0 output, not the teacher's state
    net.eval()
    with torch.no_grad():
        student_in = net.forward_block(0, ids, path=paths[0])
        expected = net.forward_block(1, student_in, path=paths[1])
        loss_eval, mse_eval, _ = stage_loss(net, 1, paths, ids, targets, attention_weight=0.0)
    assert mse_eval == pytest.approx(float(((expected - targets.states[1]) ** 2).mean()), rel=1e-5)


def test_whole_model_stage_trains_every_block(mobile_space, tiny_teacher):
    net = SuperNet.from_teacher(mobile_space, tiny_teacher).train()
    ids = torch.randint(5, 99, (2, 9))
    targets = teacher_targets(tiny_teacher, mobile_space, ids, torch.ones_like(ids))
    arch = Arch.parse("24:bottleneck16x2,mha,identity,identity|16:mha,bottleneck8x1,ffn,identity")
    loss, _, _ = whole_model_loss(net, arch, ids, targets, attention_weight=0.5)
    loss.backward()
    for n in range(mobile_space.num_blocks):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in net.block_parameters(n)), n


def _trainer(space, teacher, corpus, tokenizer, workdir, config=None):
    return BlockwiseTrainer(SuperNet.from_teacher(space, teacher), teacher, corpus, config or progressive_config(),
                            tokenizer=tokenizer, workdir=workdir, seed=0, show_progress=False)


def test_progressive_training_runs_stages_in_order_and_lowers_the_loss(mobile_space, tiny_teacher, corpus,
                                                                       tokenizer, tmp_path):
    trainer = _trainer(mobile_space, tiny_teacher, corpus, tokenizer, tmp_path / "train",
                       progressive_config(steps=12))
    result = trainer.train()
    assert mobile_space.num_blocks == 2 and result["steps"] == 2 * 9 + 3
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert [r["stage"] for r in train] == [0] * 9 + [1] * 9 + ["whole"] * 3
    assert all(r["losses"][1] is None for r in train[:9]) and all(None not in r["losses"] for r in train[-3:])
    first, last = train[0]["losses"][0], train[8]["losses"][0]
    assert last < first  # block 0 learns during its stage
    assert (tmp_path / "train" / "candidates.json").is_file()


def test_progressive_resume_is_exact(mobile_space, tiny_teacher, corpus, tokenizer, tmp_path):
    full = _trainer(mobile_space, tiny_teacher, corpus, tokenizer, tmp_path / "a")
    full.train()
    stopped = _trainer(mobile_space, tiny_teacher, corpus, tokenizer, tmp_path / "b")
    assert stopped.train(stop_after=7) is None  # inside stage 1
    resumed = _trainer(mobile_space, tiny_teacher, corpus, tokenizer, tmp_path / "b")
    resumed.train()
    for (name, a), (_, b) in zip(full.supernet.state_dict().items(), resumed.supernet.state_dict().items()):
        assert torch.equal(a, b), name


def test_progressive_refuses_ray(mobile_space, tiny_teacher, corpus, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="disable ray"):
        BlockwiseTrainer(SuperNet.from_teacher(mobile_space, tiny_teacher), tiny_teacher, corpus,
                         progressive_config(), tokenizer=tokenizer, workdir=tmp_path, block_runner=object(),
                         show_progress=False)


def test_pipeline_runs_progressive_training_on_a_bottleneck_space(mobile_space, tiny_teacher_dir, tmp_path):
    """`nasbert run` end to end with MobileBERT ops and progressive transfer; the family loads and runs."""
    import os
    import subprocess
    from pathlib import Path

    from transformers import AutoModel

    from test_pipeline import TINY, _nasbert  # tests/ is on sys.path under pytest

    space_file = tmp_path / "tiny_mobile.yaml"
    space_file.write_text(mobile_space.to_yaml())
    out = tmp_path / "run"
    # a parameter budget as well as a speed-up: a member exists however noisily this host times 0.2 ms models
    overrides = [o for o in TINY if not o.startswith("train.shrink.")] + [
        "train.mode=progressive", "train.shrink.enabled=false", "search.budgets=[1.2x, 40k]"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NASBERT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(_nasbert() + ["run", "--space", str(space_file), "--teacher", tiny_teacher_dir,
                                        "--out", str(out), "--no-progress", *overrides],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    stages = [json.loads(line).get("stage") for line in (out / "train" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "train"]
    assert stages == [0] * 6 + [1] * 6 + ["whole"] * 2
    family = json.loads((out / "family" / "family.json").read_text())
    member = Path(out / "family" / family["models"][0]["name"])
    model = AutoModel.from_pretrained(member)
    with torch.no_grad():
        assert model(torch.randint(5, 99, (1, 8))).last_hidden_state.shape == (1, 8, 32)
