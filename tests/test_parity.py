"""The supernet-vs-teacher check of ``nasbert run``: its bound, and that something is always compared."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from nasbert import SearchSpace, SuperNet
from nasbert.supernet.parity import PARITY_ATOL, TeacherParityError, check_teacher_parity, teacher_parity


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher_dir):
    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


def _one_block_mobile(tiny_space, **extra) -> SearchSpace:
    """The tiny space as one block after MobileBERT's embedding (factorised table, NoNorm): the teacher's
    embedding output cannot be reproduced, and there is no later block to check on its own."""
    data = tiny_space.to_dict()
    data.update({"name": "tiny_one_block", "num_blocks": 1, "factorized_embedding_size": 8,
                 "embedding_norm": "nonorm", **extra})
    return SearchSpace.from_dict(data)


def _shift_output(net: SuperNet, by: float) -> SuperNet:
    with torch.no_grad():  # the last output adapter's bias: every real token's channel 0 moves by exactly `by`
        net.out_adapters[-1].bias[0] += by
    return net


def _break_last_ffn(net: SuperNet) -> SuperNet:
    with torch.no_grad():
        net.slots[-1].ffn.output.bias.add_(torch.randn(net.slots[-1].ffn.output.bias.shape,
                                                       generator=torch.Generator().manual_seed(0)))
    return net


def test_the_bound_is_the_readmes():
    assert PARITY_ATOL == 1e-4


def test_a_fresh_supernet_passes_and_an_error_over_the_bound_fails(tiny_space, tiny_teacher, tokenizer):
    net = SuperNet.from_teacher(tiny_space, tiny_teacher).eval()
    assert check_teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32) < PARITY_ATOL
    _shift_output(net, 5e-4)  # over 1e-4, under 1e-3
    assert teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32) == pytest.approx(5e-4, rel=1e-2)
    with pytest.raises(TeacherParityError, match=r"max \|diff\| = 5.0\de-04, more than 1e-04"):
        check_teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32)
    with torch.no_grad():
        net.out_adapters[-1].bias[0] = float("nan")
    with pytest.raises(TeacherParityError):
        check_teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32)


@pytest.mark.parametrize("extra", [{}, {"factorized_embedding_size": None}])  # factorised + NoNorm; NoNorm only
def test_a_one_block_space_after_other_embeddings_is_still_compared(tiny_space, tiny_teacher, tokenizer, extra):
    space = _one_block_mobile(tiny_space, **extra)
    net = SuperNet.from_teacher(space, tiny_teacher).eval()
    assert teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32) < PARITY_ATOL
    _break_last_ffn(net)
    assert teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32) > 0.1
    with pytest.raises(TeacherParityError):
        check_teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32)


def test_block_0_is_compared_in_a_multi_block_space_after_other_embeddings(tiny_space, tiny_teacher, tokenizer):
    data = tiny_space.to_dict()
    data.update(name="tiny_mobile", factorized_embedding_size=8, embedding_norm="nonorm")
    net = SuperNet.from_teacher(SearchSpace.from_dict(data), tiny_teacher).eval()
    assert teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32) < PARITY_ATOL
    with torch.no_grad():  # block 0's first attention, not its embeddings (a uniform shift would cancel in LayerNorm)
        net.slots[0].mha.dense.bias.add_(torch.randn(32, generator=torch.Generator().manual_seed(0)))
    assert teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32) > 0.1


def test_nothing_to_compare_is_an_error(tiny_space, tiny_teacher, tokenizer):
    net = SuperNet.from_teacher(tiny_space, tiny_teacher).eval()

    def no_tokens(texts, **kwargs):
        batch = tokenizer(texts, **kwargs)
        batch["attention_mask"] = torch.zeros_like(batch["attention_mask"])
        return batch

    with pytest.raises(TeacherParityError, match="no tokens to compare"):
        teacher_parity(net, tiny_teacher, no_tokens, max_docs=2, seq_len=32)


@pytest.mark.parametrize("case", ["over 1e-4", "one block after other embeddings"])
def test_nasbert_run_refuses_a_supernet_that_is_not_the_teacher(case, tiny_space, tiny_teacher_dir, tmp_path,
                                                                monkeypatch):
    """The supernet stage of ``nasbert run`` holds the bound: an error between 1e-4 and 1e-3 fails it, and so does
    a broken block in a one-block space after MobileBERT's embedding; nothing is saved."""
    from nasbert.run import stage_supernet
    from nasbert.run import RunConfig, RunDir

    if case == "over 1e-4":
        space, damage = tiny_space, (lambda net: _shift_output(net, 5e-4))
    else:
        space, damage = _one_block_mobile(tiny_space), _break_last_ffn
    path = tmp_path / "space.yaml"
    path.write_text(space.to_yaml())
    built = SuperNet.from_teacher
    monkeypatch.setattr(SuperNet, "from_teacher", lambda *args, **kwargs: damage(built(*args, **kwargs)))
    config = RunConfig.from_dict({"space": str(path), "teacher": tiny_teacher_dir})
    run = RunDir.open(tmp_path / "run", config)
    with pytest.raises(RuntimeError, match="does not reproduce the teacher"):
        stage_supernet(run, config)
    assert not (run.path / "supernet").exists()
