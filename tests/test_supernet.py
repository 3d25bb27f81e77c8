"""Parity, the spine: teacher == supernet(teacher_arch); supernet(arch) == extract(arch); exact counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasbert import Arch, BlockArch, SearchSpace, SpaceError, SuperNet, TeacherError
from nasbert.supernet.importance import head_order, neuron_order

N_ARCHS = 30


@pytest.fixture(scope="module")
def supernet(tiny_space, tiny_teacher) -> SuperNet:
    return SuperNet.from_teacher(tiny_space, tiny_teacher).eval()


@pytest.fixture(scope="module")
def archs(tiny_space) -> list[Arch]:
    rng = np.random.default_rng(1234)
    fixed = [tiny_space.largest_arch(), tiny_space.smallest_arch(), tiny_space.teacher_arch(),
             Arch.parse("16:identity,identity,identity,identity|32:mha,identity,identity,identity")]
    return fixed + [tiny_space.sample(rng) for _ in range(N_ARCHS)]


def test_supernet_under_teacher_arch_reproduces_teacher(supernet, tiny_space, tiny_teacher, batch):
    ids, mask, types = batch
    with torch.no_grad():
        expected = tiny_teacher(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        final, states = supernet(ids, mask, types, arch=tiny_space.teacher_arch(), output_block_states=True)
    keep = mask.bool()
    torch.testing.assert_close(final[keep], expected.last_hidden_state[keep], atol=1e-4, rtol=0)
    for n, boundary in enumerate(tiny_space.teacher_boundaries):
        torch.testing.assert_close(states[n][keep], expected.hidden_states[boundary][keep], atol=1e-4, rtol=0)


def test_each_block_alone_reproduces_its_teacher_block(supernet, tiny_space, tiny_teacher, batch):
    ids, mask, types = batch
    with torch.no_grad():
        hidden = tiny_teacher(input_ids=ids, attention_mask=mask, token_type_ids=types,
                              output_hidden_states=True).hidden_states
    teacher_block = tiny_space.teacher_arch().blocks[0]
    keep = mask.bool()
    for n, boundary in enumerate(tiny_space.teacher_boundaries):
        inputs = ids if n == 0 else hidden[tiny_space.teacher_boundaries[n - 1]]
        with torch.no_grad():
            out = supernet.forward_block(n, inputs, mask, types, path=teacher_block)
        torch.testing.assert_close(out[keep], hidden[boundary][keep], atol=1e-4, rtol=0)


def test_forward_block_matches_whole_forward(supernet, archs, batch):
    ids, mask, types = batch
    for arch in archs[:10]:
        with torch.no_grad():
            _, states = supernet(ids, mask, types, arch=arch, output_block_states=True)
            for n, path in enumerate(arch.blocks):
                inputs = ids if n == 0 else states[n - 1]
                out = supernet.forward_block(n, inputs, mask, types, path=path)
                torch.testing.assert_close(out, states[n], atol=1e-6, rtol=0)


def test_extracted_model_matches_supernet(supernet, archs, batch):
    ids, mask, types = batch
    for arch in archs:
        model = supernet.extract(arch)
        with torch.no_grad():
            expected = supernet(ids, mask, types, arch=arch)
            got = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=lambda m: f"{arch}: {m}")


def test_extracted_parameter_count_is_exact(supernet, tiny_space, archs):
    for arch in archs:
        model = supernet.extract(arch)
        assert sum(p.numel() for p in model.parameters()) == tiny_space.num_params(arch), str(arch)
        assert len(model.encoder.layer) == arch.num_layers


def test_flops_match_torch_flop_counter(supernet, tiny_space, archs):
    seq_len = 11
    ids = torch.randint(5, 99, (1, seq_len))
    for arch in archs:
        model = supernet.extract(arch)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(ids)
        assert counter.get_total_flops() == tiny_space.flops(arch, seq_len), str(arch)


def test_padding_does_not_leak_into_real_tokens(supernet, tiny_space):
    """Real tokens see the same outputs whether or not padding follows them (sepconv zeroes the padding)."""
    arch = Arch.parse("24:sepconv7,mha,sepconv5,ffn|32:sepconv3,sepconv7,mha,identity")
    ids = torch.randint(5, 99, (1, 4))
    padded = torch.cat([ids, torch.full((1, 3), 7)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        alone = supernet(ids, arch=arch)
        with_pad = supernet(padded, mask, arch=arch)
    torch.testing.assert_close(with_pad[:, :4], alone, atol=1e-5, rtol=0)


def test_prefix_slicing_trains_only_the_slice(tiny_space, tiny_teacher):
    supernet = SuperNet.from_teacher(tiny_space, tiny_teacher)
    arch = Arch.parse("16:mha,ffn,sepconv3,identity|24:ffn,identity,identity,identity")
    supernet(torch.randint(5, 99, (2, 6)), arch=arch).pow(2).mean().backward()
    q = supernet.slots[0].mha.query.weight.grad
    assert q[:16, :16].abs().sum() > 0
    assert q[16:].abs().sum() == 0 and q[:, 16:].abs().sum() == 0
    inner = supernet.slots[1].ffn.intermediate.weight.grad  # ffn at width 16: 64 inner units
    assert inner[:64, :16].abs().sum() > 0 and inner[64:].abs().sum() == 0
    dw = supernet.slots[2].sepconv.depthwise_weight.grad  # kernel 3 = the centre taps 2..4 of 7
    assert dw[:16, :, 2:5].abs().sum() > 0
    assert dw[:, :, :2].abs().sum() == 0 and dw[:, :, 5:].abs().sum() == 0 and dw[16:].abs().sum() == 0
    assert supernet.slots[3].mha.query.weight.grad is None  # identity slot: untouched
    assert supernet.in_adapters[0].weight.grad[24:].abs().sum() == 0  # block 1 input adapter: 24 rows used
    assert supernet.out_adapters[0].weight.grad[:, 16:].abs().sum() == 0


def test_units_are_ordered_by_importance(supernet, tiny_space):
    for slot in supernet.slots:
        layer = {
            "attention.self.value.weight": slot.mha.value.weight, "attention.output.dense.weight": slot.mha.dense.weight,
            "intermediate.dense.weight": slot.ffn.intermediate.weight, "output.dense.weight": slot.ffn.output.weight,
        }
        # Already sorted, so the importance order of the reordered weights is the identity.
        n_heads = tiny_space.teacher.num_attention_heads
        assert head_order(layer, tiny_space.head_size).tolist() == list(range(n_heads))
        assert neuron_order(layer).tolist() == list(range(tiny_space.teacher.intermediate_size))
    importance = supernet.embeddings.LayerNorm.weight.abs()
    for slot in supernet.slots[::2]:
        importance = importance + slot.mha.LayerNorm.weight.abs() + slot.ffn.LayerNorm.weight.abs()
    assert torch.all(importance[:-1] >= importance[1:])


def test_teacher_init_beats_random_init_on_a_narrow_path(tiny_space, tiny_teacher, supernet, batch):
    """Importance-ordered teacher slices start closer to the teacher than a random supernet does."""
    ids, mask, types = batch
    random_net = SuperNet(tiny_space, seed=0).eval()
    arch = Arch.parse("24:mha,ffn,mha,ffn|24:mha,ffn,mha,ffn")
    with torch.no_grad():
        target = tiny_teacher(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        init_err = (supernet(ids, mask, types, arch=arch) - target).pow(2).mean()
        random_err = (random_net(ids, mask, types, arch=arch) - target).pow(2).mean()
    assert init_err < random_err


def test_random_init_is_seeded(tiny_space):
    a, b, c = SuperNet(tiny_space, seed=3), SuperNet(tiny_space, seed=3), SuperNet(tiny_space, seed=4)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.slots[0].mha.query.weight, c.slots[0].mha.query.weight)


def test_save_and_load_round_trip(supernet, tiny_space, archs, batch, tmp_path):
    supernet.save_pretrained(tmp_path / "sn")
    loaded = SuperNet.from_pretrained(tmp_path / "sn").eval()
    assert loaded.space == tiny_space
    ids, mask, types = batch
    with torch.no_grad():
        for arch in archs[:5]:
            assert torch.equal(loaded(ids, mask, types, arch=arch), supernet(ids, mask, types, arch=arch))


def test_from_pretrained_on_a_missing_dir_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved supernet"):
        SuperNet.from_pretrained(tmp_path)


def test_teacher_of_another_shape_is_rejected(tiny_teacher):
    with pytest.raises(TeacherError, match="hidden_size"):
        SuperNet.from_teacher(SearchSpace.load("minilm_l6"), tiny_teacher)


def test_forward_rejects_archs_outside_the_space(supernet):
    with pytest.raises(SpaceError, match="hidden_choices"):
        supernet(torch.ones(1, 3, dtype=torch.long), arch=Arch.parse("20:mha,ffn,mha,ffn|16:mha,ffn,mha,ffn"))
    with pytest.raises(SpaceError, match="identity"):
        supernet.forward_block(0, torch.ones(1, 3, dtype=torch.long), path=BlockArch(16, ("identity", "mha", "ffn", "ffn")))


def test_dropout_is_active_in_training_mode_only(tiny_space, tiny_teacher):
    net = SuperNet.from_teacher(tiny_space, tiny_teacher)
    ids, arch = torch.randint(5, 99, (2, 6)), tiny_space.largest_arch()
    net.train()
    assert not torch.equal(net(ids, arch=arch), net(ids, arch=arch))
    net.eval()
    assert torch.equal(net(ids, arch=arch), net(ids, arch=arch))


def test_extraction_parity_holds_after_weights_move(tiny_space, tiny_teacher, archs, batch):
    """After training the adapters are no longer permutations; folding them must stay exact."""
    net = SuperNet.from_teacher(tiny_space, tiny_teacher).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ids, mask, types = batch
    for arch in archs:
        with torch.no_grad():
            expected = net(ids, mask, types, arch=arch)
            got = net.extract(arch)(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=lambda m: f"{arch}: {m}")
