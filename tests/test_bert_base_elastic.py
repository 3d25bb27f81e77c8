"""A 12-layer teacher of BERT-base's shape (hidden 768, 12 heads, FFN 3,072; random weights) through ``nasbert run``
with the elastic space built from its config, end to end: latency profile, the calibrated search, export and a
Hugging Face reload (training is skipped: the default export reads no trained supernet). Nothing in the pipeline
may assume the built-in teacher's 6 layers. Slow (minutes on 2 cores):
``python -m pytest -m slow tests/test_bert_base_elastic.py``."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

from test_pipeline import _nasbert  # tests/ is on sys.path under pytest

pytestmark = pytest.mark.slow

SMALL = ["corpus.seq_len=32", "corpus.max_documents=8", "train.steps=4", "train.batch_size=2", "train.eval_every=0",
         "train.eval_batches=1", "train.eval_paths=2", "train.warmup_steps=1", "train.shrink.enabled=false",
         "latency.seq_len=32", "latency.archs=12", "latency.repeats=3", "latency.rounds=1", "latency.warmup=1",
         "latency.table_repeats=3", "latency.group_size=6", "search.trials=16", "search.budgets=[2x, 4x]",
         "search.top_k=1", "search.calibrate_rows=8", "search.proxy_batches=1", "export.eval_batches=1",
         "export.calibrate_rows=8", "export.int8=false", "search.probe_train=32", "search.probe_test=16"]


@pytest.fixture(scope="module")
def bert_base_dir(tmp_path_factory):
    """A randomly initialised BERT-base-shaped teacher with the built-in teacher's (bert-base-uncased) tokenizer."""
    from nasbert.teacher import load_teacher

    _, tokenizer, _ = load_teacher(None)
    torch.manual_seed(0)
    config = BertConfig()  # 12 layers, hidden 768, 12 heads, FFN 3,072, vocabulary 30,522
    path = tmp_path_factory.mktemp("bert-base-random")
    BertModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_12_layer_teacher_runs_end_to_end_with_the_elastic_space(bert_base_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NASBERT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(_nasbert() + ["run", "--teacher", str(bert_base_dir), "--out", str(out), "--no-progress",
                                        *SMALL], capture_output=True, text=True, env=env, timeout=3000)
    assert done.returncode == 0, done.stderr[-4000:]

    import yaml

    space = yaml.safe_load((out / "space.yaml").read_text())
    assert space["elastic"] is True and space["teacher"]["num_hidden_layers"] == 12
    assert "mha11" in space["ops"] and "ffn2688" in space["ops"]
    accuracy = json.loads(next((out / "latency").glob("*/accuracy.json")).read_text())
    assert accuracy["n_heldout"] > 0 and accuracy["predictor"]["mape"] >= 0

    family = json.loads((out / "family" / "family.json").read_text())
    assert family["models"], "the export chose no member"
    for member in family["models"]:
        assert member["source"] == "teacher" and "search trial" in member["choice"]
        blocks = member["arch"]["blocks"]
        assert len(blocks) == 12 and all(b["width"] == 768 for b in blocks)
        model = AutoModel.from_pretrained(out / "family" / member["path"], trust_remote_code=True).eval()
        assert sum(p.numel() for p in model.parameters()) == member["params"]
        ids = torch.randint(1000, 2000, (1, 16))
        assert model(input_ids=ids).last_hidden_state.shape == (1, 16, 768)
