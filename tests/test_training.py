"""Block-wise training: losses, prefix-shared scoring, shrinking, checkpoints and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from nasbert import Arch, SearchSpace, SuperNet
from nasbert.config import ConfigError
from nasbert.data import CorpusConfig, load_corpus
from nasbert.training import (
    BlockCandidates, BlockwiseTrainer, ShrinkConfig, TrainConfig, block_batches, block_loss, score_paths,
    shrink_round,
)
from nasbert.training.shrinking import bin_of, block_cost


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher_dir):
    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


@pytest.fixture(scope="module")
def corpus(tokenizer, tmp_path_factory):
    config = CorpusConfig(seq_len=32, max_documents=12)
    return load_corpus(config, tokenizer, cache_dir=tmp_path_factory.mktemp("cache"), show_progress=False)


def small_config(**overrides) -> TrainConfig:
    shrink = ShrinkConfig(bins=4, samples_per_bin=8, keep_per_bin=2, warmup_steps=4, steps_between_rounds=3,
                          max_rounds=2, eval_batches=1)
    base = dict(steps=10, batch_size=4, lr=1e-3, warmup_steps=2, eval_every=5, eval_batches=1, eval_paths=4,
                checkpoint_every=3, shrink=shrink)
    base.update(overrides)
    return TrainConfig(**base)


def test_block_parameters_partition_the_supernet(tiny_space):
    net = SuperNet(tiny_space)
    owned = [name for n in range(tiny_space.num_blocks) for name, _ in net.block_parameters(n)]
    assert sorted(owned) == sorted(name for name, _ in net.named_parameters())
    assert len(owned) == len(set(owned))


def test_score_paths_shares_prefixes_without_changing_results(tiny_space, tiny_teacher, batch):
    net = SuperNet.from_teacher(tiny_space, tiny_teacher).eval()
    ids, mask, types = batch
    per_block = block_batches(tiny_teacher, tiny_space, ids, mask, types)
    rng = np.random.default_rng(0)
    for n in range(tiny_space.num_blocks):
        paths = [tiny_space.sample_block(n, rng) for _ in range(40)]
        paths += [Arch.parse("24:mha,identity,identity,identity").blocks[0],
                  Arch.parse("24:mha,ffn,identity,identity").blocks[0],
                  Arch.parse("16:identity,identity,identity,identity").blocks[0]]
        scored = score_paths(net, n, paths, [per_block[n], per_block[n]])
        with torch.no_grad():
            direct = [float(block_loss(net, n, p, per_block[n])) for p in paths]
        np.testing.assert_allclose(scored, direct, rtol=1e-5, atol=1e-7)


def test_bins_group_paths_of_similar_cost():
    params = np.array([1, 2, 3, 4, 100, 200, 300, 400])
    latency = np.array([1, 2, 3, 4, 100, 200, 300, 400])
    assert bin_of(params, latency, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # opposite orders: every joint rank is 3.5, so the tie keeps the paths' own order
    assert bin_of(params, latency[::-1], 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # mixed ranks: latency ranks 4 0 6 1 7 2 5 3, joint ranks 2 .5 4 2 5.5 3.5 5.5 5
    mixed = np.array([5, 1, 7, 2, 8, 3, 6, 4])
    assert bin_of(params, mixed, 2).tolist() == [0, 0, 1, 0, 1, 0, 1, 1]
    assert bin_of(params, mixed, 4).tolist() == [0, 0, 2, 1, 3, 1, 3, 2]
    assert bin_of(params, latency, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_shrink_round_drops_the_worse_half_of_what_it_scores(tiny_space):
    cand = BlockCandidates.full(tiny_space, 0, seq_len=8)
    config = ShrinkConfig(bins=4, samples_per_bin=10, keep_per_bin=2)
    loss = {str(p): float(i % 17) for i, p in enumerate(cand.paths)}  # a fixed, arbitrary quality
    survivors, report = shrink_round(cand, lambda paths: [loss[str(p)] for p in paths], config,
                                     np.random.default_rng(0))
    assert report == {"before": 2343, "scored": 40, "dropped": 20, "after": 2323}
    scored = {p: v for p, v in survivors.losses.items()}
    dropped = set(map(str, cand.paths)) - set(map(str, survivors.paths))
    assert len(dropped) == 20
    for b in range(4):  # in each bin, every dropped path scored no better than every kept scored path
        members = {str(p) for p, k in zip(cand.paths, cand.bins(4)) if k == b}
        kept = [loss[p] for p in members & set(scored)]
        gone = [loss[p] for p in members & dropped]
        assert len(gone) == 5 and max(kept) <= min(gone)


def test_shrinking_stops_at_keep_per_bin(tiny_space):
    cand = BlockCandidates.full(tiny_space, 1, seq_len=8)
    config = ShrinkConfig(bins=3, samples_per_bin=5000, keep_per_bin=3)
    rng = np.random.default_rng(1)
    while not cand.done(config):
        cand, report = shrink_round(cand, lambda paths: [float(len(p.layers)) for p in paths], config, rng)
    assert np.bincount(cand.bins(3)).tolist() == [3, 3, 3]
    cand2, report = shrink_round(cand, lambda paths: pytest.fail("nothing left to score"), config, rng)
    assert report["dropped"] == 0 and len(cand2.paths) == 9


def test_training_lowers_the_validation_loss_and_writes_its_outputs(tiny_space, tiny_teacher, tokenizer, corpus,
                                                                    tmp_path):
    net = SuperNet.from_teacher(tiny_space, tiny_teacher)
    trainer = BlockwiseTrainer(net, tiny_teacher, corpus, small_config(steps=30, eval_every=0), tokenizer=tokenizer,
                               workdir=tmp_path, seed=0, show_progress=False)
    before = trainer.evaluate()["mean"]
    result = trainer.train()
    assert result["steps"] == 30 and result["valid_loss"] < before
    assert result["shrinking_rounds"] == 2
    assert result["surviving_paths"] == [2343 - 2 * 16] * 2  # 4 bins x 8 sampled, half dropped, 2 rounds
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == list(range(1, 31))
    assert [r["step"] for r in records if r["event"] == "shrink"] == [4, 7]
    candidates = json.loads((tmp_path / "candidates.json").read_text())
    assert [len(b) for b in candidates["blocks"]] == result["surviving_paths"]
    for entry in (entry for b in candidates["blocks"] for entry in b):  # each path with its own cost
        path = Arch.parse(entry["path"]).blocks[0]
        assert entry["valid_loss"] is not None
        assert (entry["params"], entry["flops"]) == block_cost(tiny_space, path, candidates["seq_len"]), entry


def test_uniform_sampling_trains_too(tiny_space, tiny_teacher, tokenizer, corpus, tmp_path):
    net = SuperNet.from_teacher(tiny_space, tiny_teacher)
    trainer = BlockwiseTrainer(net, tiny_teacher, corpus, small_config(sampling="uniform", steps=4, eval_every=0),
                               tokenizer=tokenizer, workdir=tmp_path, seed=0, show_progress=False)
    assert all(len(trainer._paths_for_step(n)) == 1 for n in range(tiny_space.num_blocks))
    assert trainer.train()["steps"] == 4


def _train(space, teacher, corpus, tokenizer, workdir, steps_done=None, **overrides):
    net = SuperNet.from_teacher(space, teacher)
    trainer = BlockwiseTrainer(net, teacher, corpus, small_config(**overrides), tokenizer=tokenizer,
                               workdir=workdir, seed=3, show_progress=False)
    trainer.train(stop_after=steps_done)
    return trainer


def test_resume_continues_exactly_where_it_stopped(tiny_space, tiny_teacher, tokenizer, corpus, tmp_path):
    straight = _train(tiny_space, tiny_teacher, corpus, tokenizer, tmp_path / "a")
    _train(tiny_space, tiny_teacher, corpus, tokenizer, tmp_path / "b", steps_done=6)
    resumed = _train(tiny_space, tiny_teacher, corpus, tokenizer, tmp_path / "b")
    for (name, a), b in zip(straight.supernet.state_dict().items(), resumed.supernet.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    assert [str(p) for p in straight.candidates[0].paths] == [str(p) for p in resumed.candidates[0].paths]
    assert (tmp_path / "a" / "candidates.json").read_text() == (tmp_path / "b" / "candidates.json").read_text()


def test_resume_with_another_config_is_refused(tiny_space, tiny_teacher, tokenizer, corpus, tmp_path):
    _train(tiny_space, tiny_teacher, corpus, tokenizer, tmp_path, steps_done=3)
    with pytest.raises(RuntimeError, match="another training config"):
        _train(tiny_space, tiny_teacher, corpus, tokenizer, tmp_path, lr=5e-3)


def test_corpus_smaller_than_a_batch_is_refused(tiny_space, tiny_teacher, tokenizer, corpus, tmp_path):
    net = SuperNet.from_teacher(tiny_space, tiny_teacher)
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        BlockwiseTrainer(net, tiny_teacher, corpus, small_config(batch_size=len(corpus.train) + 1),
                         tokenizer=tokenizer, workdir=tmp_path, show_progress=False)


@pytest.mark.parametrize("key, value, message", [
    ("sampling", "both", "train.sampling"), ("schedule", "step", "train.schedule"), ("steps", 0, "train.steps"),
    ("lr", 2.0, "train.lr"), ("init", "zeros", "train.init"),
])
def test_bad_train_config_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**{key: value})


TINY_TRAIN = ["corpus.seq_len=32", "corpus.max_documents=12", "train.batch_size=4", "train.eval_every=0",
              "train.eval_batches=1", "train.eval_paths=2", "train.shrink.bins=4", "train.shrink.samples_per_bin=8",
              "train.shrink.keep_per_bin=2", "train.shrink.warmup_steps=10", "train.shrink.steps_between_rounds=10",
              "train.shrink.max_rounds=2", "train.shrink.eval_batches=1", "train.warmup_steps=2"]


@pytest.mark.slow  # the default suite kills `nasbert run` inside training in tests/test_faults.py
def test_killed_training_resumes_with_the_same_command(tiny_teacher_dir, tmp_path):
    """kill -9 in the middle of training, then the same command again: it continues from the last checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    command = [sys.executable, "-m", "nasbert.cli", "train", "--space", "tiny", "--teacher", tiny_teacher_dir,
               "--out", str(run), "--no-progress", "train.steps=120", "train.checkpoint_every=5", *TINY_TRAIN]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NASBERT_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics, state = run / "train" / "metrics.jsonl", run / "train" / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 15:
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed: " + process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 15 <= killed_at < 120

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {run / 'train' / 'checkpoint'} at step {killed_at}" in done.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    stage = manifest["stages"]["train"]
    assert stage["status"] == "done" and stage["steps"] == 120 and stage["resumed_at"] == killed_at
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == list(range(1, 121))  # nothing lost, nothing counted twice
    assert stage["surviving_paths"] == [2343 - 2 * 16] * 2
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "stage train: already done" in again.stderr


def test_blocks_train_as_ray_actors(tiny_space, tiny_teacher, tokenizer, corpus, tmp_path):
    ray = pytest.importorskip("ray")
    from nasbert.training.ray_blocks import RayBlockRunner

    net = SuperNet.from_teacher(tiny_space, tiny_teacher)
    config = small_config(steps=12, eval_every=0)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    runner = RayBlockRunner(net, config, num_cpus=2, seed=0)
    try:
        trainer = BlockwiseTrainer(net, tiny_teacher, corpus, config, tokenizer=tokenizer, workdir=tmp_path,
                                   seed=0, show_progress=False, block_runner=runner)
        before = trainer.evaluate()["mean"]
        result = trainer.train()
    finally:
        runner.shutdown()
    assert not ray.is_initialized()
    assert result["steps"] == 12 and result["valid_loss"] < before
    assert result["shrinking_rounds"] == 2
    # The actors' weights came back into the driver's supernet and into the checkpoint.
    for n in range(tiny_space.num_blocks):
        name, _ = net.block_parameters(n)[0]
        assert not torch.equal(net.state_dict()[name], initial[name]), name
    saved = SuperNet(tiny_space)
    from safetensors.torch import load_file
    saved.load_state_dict(load_file(tmp_path / "checkpoint" / "supernet.safetensors"))
    for name, value in net.state_dict().items():
        assert torch.equal(saved.state_dict()[name], value), name


@pytest.mark.parametrize("overrides, message", [
    (["corpus.source=files", "corpus.paths=[/no/such/corpus.txt]"], "does not exist"),
    (["corpus.source=files", "corpus.paths=[EMPTY]"], "empty"),
    (["corpus.source=files", "corpus.paths=[LATIN1]"], "UTF-8"),
    (["corpus.source=files", "corpus.paths=[SHORT]"], "tokens"),
    (["corpus.source=files", "corpus.paths=[JSONL]", "corpus.text_column=body"], "body"),
    (["train.sampling=both"], "train.sampling"),
])
def test_bad_training_input_exits_1_and_leaves_no_run_directory(tiny_teacher_dir, tmp_path, capsys, overrides,
                                                                message):
    from nasbert.cli import main

    files = {"EMPTY": ("empty.txt", b""), "LATIN1": ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1")),
             "SHORT": ("short.txt", b"one short line\n"), "JSONL": ("docs.jsonl", b'{"text": "a value"}\n')}
    resolved = []
    for item in overrides:
        for key, (name, data) in files.items():
            if f"[{key}]" in item:
                (tmp_path / name).write_bytes(data)
                item = item.replace(key, str(tmp_path / name))
        resolved.append(item)
    run = tmp_path / "run"
    code = main(["train", "--space", "tiny", "--teacher", tiny_teacher_dir, "--out", str(run), "--no-progress",
                 "train.steps=2", "corpus.seq_len=32", *resolved])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_shrinking_bins_by_table_latency_when_given(tiny_space, tiny_teacher, tokenizer, corpus, tmp_path):
    net = SuperNet.from_teacher(tiny_space, tiny_teacher)
    # A made-up table in which sepconv is very slow: binning must follow it, not FLOPs.
    latency = lambda path: sum(10.0 if op.startswith("sepconv") else 1.0 for op in path.layers)  # noqa: E731
    trainer = BlockwiseTrainer(net, tiny_teacher, corpus, small_config(steps=1, eval_every=0), tokenizer=tokenizer,
                               workdir=tmp_path, seed=0, show_progress=False, block_latency=latency)
    cand = trainer.candidates[0]
    assert cand.latency_ms == [latency(p) for p in cand.paths]
    by_flops = BlockCandidates(cand.paths, cand.params, cand.flops).bins(4)
    assert not np.array_equal(cand.bins(4), by_flops)
    trainer.train()
    record = json.loads((tmp_path / "candidates.json").read_text())["blocks"][0][0]
    assert set(record) == {"path", "valid_loss", "params", "flops", "latency_ms"}


def test_run_profiles_latency_then_trains_with_its_table(tiny_teacher_dir, tmp_path):
    from nasbert.cli import main

    run = tmp_path / "run"
    code = main(["run", "--until", "train", "--space", "tiny", "--teacher", tiny_teacher_dir, "--out", str(run),
                 "--no-progress", "train.steps=6", *TINY_TRAIN, "latency.seq_len=32", "latency.archs=8", "latency.repeats=2",
                 "latency.rounds=1", "latency.warmup=1", "latency.table_repeats=2", "latency.group_size=4"])
    assert code == 0
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert [stages[s]["status"] for s in ("supernet", "latency", "train")] == ["done"] * 3
    key = stages["latency"]["device_key"]
    assert key.endswith("-cpu-onnxruntime-t1-b1-s32") and (run / "latency" / key / "accuracy.json").is_file()
    assert stages["train"]["binning"] == f"params+latency table {key}"
    space = SearchSpace.load(run / "space.yaml")
    assert space.candidates is not None and [len(c) for c in space.candidates] == stages["train"]["surviving_paths"]
