"""The same parity checks on the real built-in teacher, MiniLM-L6-H384 (slow: run with -m slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel

from nasbert import SearchSpace, SuperNet, load_teacher
from nasbert.data import builtin_documents
from nasbert.export import save_hf_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    space = SearchSpace.load("minilm_l6")
    teacher, tokenizer, _ = load_teacher()
    supernet = SuperNet.from_teacher(space, teacher).eval()
    batch = tokenizer(builtin_documents()[:4], padding=True, truncation=True, max_length=64, return_tensors="pt")
    return space, teacher, tokenizer, supernet, batch


def test_builtin_teacher_is_reproduced(setup):
    space, teacher, _, supernet, batch = setup
    with torch.no_grad():
        expected = teacher(**batch, output_hidden_states=True)
        final, states = supernet(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                 arch=space.teacher_arch(), output_block_states=True)
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(final[keep], expected.last_hidden_state[keep], atol=1e-4, rtol=0)
    for n, boundary in enumerate(space.teacher_boundaries):
        torch.testing.assert_close(states[n][keep], expected.hidden_states[boundary][keep], atol=1e-4, rtol=0)


def test_builtin_sampled_archs_extract_and_reload(setup, tmp_path):
    space, _, tokenizer, supernet, batch = setup
    rng = np.random.default_rng(0)
    for i in range(4):
        arch = space.sample(rng)
        model = supernet.extract(arch)
        assert sum(p.numel() for p in model.parameters()) == space.num_params(arch)
        save_hf_model(model, tmp_path / f"m{i}", tokenizer=tokenizer)
        reloaded = AutoModel.from_pretrained(tmp_path / f"m{i}")
        with torch.no_grad():
            expected = supernet(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], arch=arch)
            got = reloaded(**batch).last_hidden_state
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=lambda m: f"{arch}: {m}")


def test_teacher_arch_params_are_the_teachers_plus_adapters(setup):
    space, teacher, _, _, _ = setup
    teacher_params = sum(p.numel() for n, p in teacher.named_parameters() if not n.startswith("pooler."))
    H = space.teacher.hidden_size
    adapters = space.num_blocks * (H * H + H)  # N - 1 boundary adapters + the output adapter
    assert space.num_params(space.teacher_arch()) == teacher_params + adapters
