"""Parity, the spine: teacher == supernet(teacher_arch); supernet(arch) == extract(arch); exact counts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasbert import Arch, BlockArch, SearchSpace, SpaceError, SuperNet, TeacherError
from nasbert.supernet.importance import head_order, hidden_order, neuron_order, reorder_bert, split_bert_state

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


def test_extraction_folds_the_maps_around_a_block_with_no_layers(supernet, tiny_space, batch):
    """A block with no layers costs no linear map: the map into it and the one out of it become one layer."""
    ids, mask, types = batch
    arch = Arch.parse("24:mha,ffn,identity,identity|16:identity,identity,identity,identity")
    assert arch.adapters == [False, True]
    model = supernet.extract(arch)
    assert isinstance(model.encoder.adapters[0], torch.nn.Identity)
    assert tuple(model.encoder.output_adapter.weight.shape) == (32, 24)  # 24 -> 32, not 24 -> 16 -> 32
    assert sum(p.numel() for p in model.parameters()) == tiny_space.num_params(arch)
    assert tiny_space.num_params(arch) == tiny_space.num_params(arch, adapters=True) - (24 * 16 + 16) - (16 * 32 + 32) \
        + (24 * 32 + 32)
    with torch.no_grad():
        expected = supernet(ids, mask, types, arch=arch)
        got = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_config_checks_the_maps_it_leaves_out():
    from nasbert import NasBertConfig

    blocks = [{"width": 24, "ops": ["mha"]}, {"width": 16, "ops": ["ffn"]}]
    with pytest.raises(ValueError, match="one true/false per block"):
        NasBertConfig(blocks=blocks, hidden_size=32, head_size=8, adapters=[True])
    with pytest.raises(ValueError, match="leaves a 24-wide state where block 1 needs 16"):
        NasBertConfig(blocks=blocks, hidden_size=32, head_size=8, adapters=[False, True])
    with pytest.raises(ValueError, match="leaves a 16-wide state where the output needs 32"):
        NasBertConfig(blocks=blocks, hidden_size=32, head_size=8, adapters=[True, False])
    assert NasBertConfig(blocks=blocks, hidden_size=32, head_size=8, adapters=[True, True]).adapters is True
    empty = [{"width": 24, "ops": ["mha"]}, {"width": 16, "ops": ["identity"]}]
    assert NasBertConfig(blocks=empty, hidden_size=32, head_size=8, adapters=[False, True]).adapters == [False, True]


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


def _scrambled_teacher(teacher, head_size: int):
    """A copy of ``teacher`` whose heads, FFN neurons and hidden channels have a known importance, out of order.

    Each head's value rows and output columns are given norms ``a`` and ``b``, so its score
    ``||W_o[:, h]|| * ||W_v[h, :]||`` is exactly ``a * b``, and neither factor alone orders the heads as the
    product does; FFN neurons likewise; every LayerNorm's ``|gamma|`` is the channel's score (the embedding
    LayerNorm's with alternating signs). Every bias is random, so a bias left out of a permutation shows. Returns
    the copy and the scores: per layer (heads, neurons), and the hidden channels'.
    """
    model = copy.deepcopy(teacher)
    config = model.config
    g = torch.Generator().manual_seed(7)
    n_heads, inner, hidden = config.num_attention_heads, config.intermediate_size, config.hidden_size

    def unsorted(order):
        identity = torch.arange(len(order))
        return not (torch.equal(order, identity) or torch.equal(order, identity.flip(0)))

    def scores(n):  # distinct, well apart, in a random order that is not already sorted
        order = torch.randperm(n, generator=g)
        while not unsorted(order):
            order = torch.randperm(n, generator=g)
        return 1.0 + order.double() / n

    def factors(n):  # (a, b): a * b are unsorted scores, ordered unlike a and unlike b
        while True:
            product = scores(n)
            a = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
            rank = torch.argsort(product, descending=True)
            if not any(torch.equal(rank, torch.argsort(x, descending=True)) for x in (a, product / a)):
                return a, product / a

    hidden_scores = scores(hidden)
    layer_scores = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        signs = torch.ones(hidden)
        signs[1::2] = -1
        model.embeddings.LayerNorm.weight.copy_(hidden_scores * signs)
        for layer in model.encoder.layer:
            (va, ob), (ia, ob2) = factors(n_heads), factors(inner)
            v = layer.attention.self.value.weight.view(n_heads, head_size, hidden)
            v.div_(v.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()).mul_(va.float().view(-1, 1, 1))
            o = layer.attention.output.dense.weight.view(hidden, n_heads, head_size)
            o.div_(o.pow(2).sum(dim=(0, 2), keepdim=True).sqrt()).mul_(ob.float().view(1, -1, 1))
            w_in, w_out = layer.intermediate.dense.weight, layer.output.dense.weight
            w_in.div_(w_in.norm(dim=1, keepdim=True)).mul_(ia.float().view(-1, 1))
            w_out.div_(w_out.norm(dim=0, keepdim=True)).mul_(ob2.float().view(1, -1))
            layer.attention.output.LayerNorm.weight.copy_(hidden_scores)
            layer.output.LayerNorm.weight.copy_(hidden_scores)
            layer_scores.append((va * ob, ia * ob2))
    return model.eval(), layer_scores, hidden_scores


def test_reordering_sorts_units_given_out_of_order_and_keeps_the_function(tiny_space, tiny_teacher, batch):
    head_size, hidden = tiny_space.head_size, tiny_space.teacher.hidden_size
    teacher, layer_scores, hidden_scores = _scrambled_teacher(tiny_teacher, head_size)
    state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    embeddings, layers = split_bert_state(state, teacher.config.num_hidden_layers)
    expected_perm = torch.argsort(hidden_scores, descending=True)
    assert expected_perm.tolist() != list(range(hidden))
    for layer, (heads, neurons) in zip(layers, layer_scores):  # the criteria read the scores given
        assert head_order(layer, head_size).tolist() == torch.argsort(heads, descending=True).tolist()
        assert neuron_order(layer).tolist() == torch.argsort(neurons, descending=True).tolist()
        assert head_order(layer, head_size).tolist() != list(range(len(heads)))
    assert hidden_order(embeddings, layers).tolist() == expected_perm.tolist()

    new_embeddings, new_layers, perm = reorder_bert(embeddings, layers, head_size)
    assert perm.tolist() == expected_perm.tolist()
    assert torch.equal(new_embeddings["word_embeddings.weight"], embeddings["word_embeddings.weight"][:, perm])
    assert torch.equal(new_embeddings["LayerNorm.weight"], embeddings["LayerNorm.weight"][perm])
    for old, new, (heads, neurons) in zip(layers, new_layers, layer_scores):
        head_rank = torch.argsort(heads, descending=True)
        rows = (head_rank[:, None] * head_size + torch.arange(head_size)[None, :]).reshape(-1)
        units = torch.argsort(neurons, descending=True)
        for name in ("query", "key", "value"):
            w = f"attention.self.{name}.weight"
            assert torch.equal(new[w], old[w][rows][:, perm]), name
        assert torch.equal(new["attention.output.dense.weight"], old["attention.output.dense.weight"][perm][:, rows])
        assert torch.equal(new["intermediate.dense.weight"], old["intermediate.dense.weight"][units][:, perm])
        assert torch.equal(new["output.dense.weight"], old["output.dense.weight"][perm][:, units])
        assert head_order(new, head_size).tolist() == list(range(len(heads)))  # now most important first
        assert neuron_order(new).tolist() == list(range(len(neurons)))

    # A BERT holding the reordered weights computes the teacher's hidden states with channels permuted by perm.
    reordered = copy.deepcopy(teacher)
    new_state = dict(state)
    new_state.update({f"embeddings.{k}": v for k, v in new_embeddings.items()})
    for i, layer in enumerate(new_layers):
        new_state.update({f"encoder.layer.{i}.{k}": v for k, v in layer.items()})
    reordered.load_state_dict(new_state)
    ids, mask, types = batch
    keep = mask.bool()
    with torch.no_grad():
        expected = teacher(input_ids=ids, attention_mask=mask, token_type_ids=types,
                           output_hidden_states=True).hidden_states
        got = reordered(input_ids=ids, attention_mask=mask, token_type_ids=types,
                        output_hidden_states=True).hidden_states
    for a, b in zip(got, expected):
        torch.testing.assert_close(a[keep], b[keep][:, perm], atol=1e-5, rtol=0)

    # The supernet takes the reordered units and still reproduces the teacher.
    net = SuperNet.from_teacher(tiny_space, teacher).eval()
    for s, slot in enumerate(net.slots):
        assert torch.equal(slot.mha.value.weight, new_layers[s // 2]["attention.self.value.weight"])
        assert torch.equal(slot.ffn.intermediate.weight, new_layers[s // 2]["intermediate.dense.weight"])
    with torch.no_grad():
        out = net(ids, mask, types, arch=tiny_space.teacher_arch())
        target = teacher(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    torch.testing.assert_close(out[keep], target[keep], atol=1e-4, rtol=0)


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
