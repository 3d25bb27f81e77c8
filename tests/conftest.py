"""Shared fixtures: a tiny random BERT teacher shaped like ``search_spaces/tiny.yaml`` (built here, no network)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

# Before transformers / huggingface_hub are imported: they read these once. Tests never use the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from nasbert import SearchSpace

def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server or a process group a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY_WORDS = [
    "the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "this", "be", "at", "by",
    "an", "are", "or", "from", "not", "value", "function", "object", "class", "return", "statement", "name",
    "list", "type", "module", "##s", "##ed", "##ing", ".", ",", "(", ")", ":", "=", "'",
]


def _tiny_vocab(size: int) -> list[str]:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = list(dict.fromkeys(special + TINY_WORDS + letters + [f"##{c}" for c in letters]))
    vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    return vocab[:size]


@pytest.fixture(scope="session")
def tiny_space() -> SearchSpace:
    return SearchSpace.load("tiny")


@pytest.fixture(scope="session")
def tiny_teacher(tiny_space) -> BertModel:
    t = tiny_space.teacher
    config = BertConfig(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads, intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings, type_vocab_size=t.type_vocab_size,
    )
    torch.manual_seed(0)
    model = BertModel(config)
    # Random LayerNorm scales and biases, so that importance reordering and the hidden permutation matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_teacher_dir(tiny_teacher, tmp_path_factory) -> str:
    """The tiny teacher saved as a Hugging Face directory, with a matching WordPiece tokenizer."""
    path = tmp_path_factory.mktemp("tiny-teacher")
    tiny_teacher.save_pretrained(path)
    vocab = {token: i for i, token in enumerate(_tiny_vocab(tiny_teacher.config.vocab_size))}
    tokenizer = BertTokenizerFast(vocab=vocab, model_max_length=tiny_teacher.config.max_position_embeddings)
    assert tokenizer("the value")["input_ids"] == [vocab["[CLS]"], vocab["the"], vocab["value"], vocab["[SEP]"]]
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def batch(tiny_space):
    """A batch of 3 sequences of 7 tokens, the last two padded."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, tiny_space.teacher.vocab_size, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    return ids, mask, types


@pytest.fixture(scope="session")
def tiny_run_template(tiny_teacher_dir, tmp_path_factory) -> Path:
    """A finished default ``nasbert run`` of the tiny teacher (``test_pipeline.TINY``: budgets 1.2x, 1.5x, 2x), made
    once a session, with its corpus cache beside it. Modules take their own copy (``copy_run``), so that what
    one module's tests do to a run (a longer search) stays in that module."""
    from test_pipeline import TINY, _nasbert  # tests/ is on sys.path under pytest

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NASBERT_CACHE": str(out.parent / "cache")}
    done = subprocess.run(_nasbert() + ["run", "--space", "tiny", "--teacher", tiny_teacher_dir, "--out", str(out),
                                        "--no-progress", *TINY], check=False, capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def copy_run(template: Path, parent: Path) -> Path:
    """A copy of the run ``template`` (and its corpus cache) under ``parent``: the copy's ``run`` directory."""
    import shutil

    shutil.copytree(template.parent, parent, dirs_exist_ok=True)
    return parent / template.name
