"""MobileBERT ops: bottleneck layers, NoNorm, ReLU and the factorised embedding, checked against Hugging Face's
MobileBertModel (weights ported one to one), and through the supernet, extraction, HF reload and ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, MobileBertConfig, MobileBertModel

from nasbert import Arch, NasBertConfig, NasBertModel, SearchSpace, SuperNet
from nasbert.export import save_hf_model
from nasbert.onnxio import export_onnx
from nasbert.space import SpaceError, op_flops, op_params

OFFICIAL_BLOCK = "512:" + ",".join(["bottleneck128x4"] * 6)
OFFICIAL = Arch.parse("|".join([OFFICIAL_BLOCK] * 4))


@pytest.fixture(scope="module")
def mobile_space(tiny_space) -> SearchSpace:
    """The tiny space with bottleneck ops, a factorised embedding and NoNorm/ReLU."""
    data = tiny_space.to_dict()
    data.update(name="tiny_mobile", ops=["mha", "ffn", "sepconv3", "bottleneck8x1", "bottleneck16x2",
                                         "bottleneck16x4", "identity"],
                bottleneck_head_size=8, factorized_embedding_size=8, embedding_norm="nonorm")
    return SearchSpace.from_dict(data)


@pytest.fixture(scope="module")
def mobile_supernet(mobile_space, tiny_teacher) -> SuperNet:
    net = SuperNet.from_teacher(mobile_space, tiny_teacher).eval()
    with torch.no_grad():  # NoNorm scales of 1 and zero biases would hide slicing mistakes
        g = torch.Generator().manual_seed(1)
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net


@pytest.fixture(scope="module")
def mobile_archs(mobile_space) -> list[Arch]:
    rng = np.random.default_rng(3)
    archs = [mobile_space.sample(rng) for _ in range(6)]
    archs.append(Arch.parse("32:bottleneck16x4,bottleneck16x4,bottleneck16x4,bottleneck16x4|"
                            "16:bottleneck8x1,bottleneck16x2,mha,identity"))
    return archs


# ------------------------------------------------------------------------------------------------ the space


def test_official_mobilebert_is_one_architecture_of_the_shipped_space():
    space = SearchSpace.load("mobilebert")
    space.validate(OFFICIAL)
    hf = MobileBertModel(MobileBertConfig(), add_pooling_layer=False)  # 24 layers, 512 / 128, 4 heads, 4 FFNs
    assert (hf.config.num_hidden_layers, hf.config.hidden_size, hf.config.intra_bottleneck_size,
            hf.config.num_attention_heads, hf.config.num_feedforward_networks, hf.config.embedding_size) == (
        24, 512, 128, 4, 4, 128)
    assert OFFICIAL.num_layers == 24
    assert space.factorized_embedding_size == 128 and 128 // space.bottleneck_head_size == 4
    # nasbert adds one linear adapter at each block boundary and one to the teacher's width
    adapters = 3 * (512 * 512 + 512) + (512 * 768 + 768)
    assert space.num_params(OFFICIAL) == sum(p.numel() for p in hf.parameters()) + adapters
    model = NasBertModel(SuperNet.extract_config(_StubSupernet(space), OFFICIAL))
    assert sum(p.numel() for p in model.parameters()) == space.num_params(OFFICIAL)


class _StubSupernet:
    """Just what ``SuperNet.extract_config`` reads (a BERT-base supernet is too large for a unit test)."""

    def __init__(self, space):
        self.space = space
        self.hparams = dict(hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.1,
                            attention_probs_dropout_prob=0.1, pad_token_id=0, initializer_range=0.02)


def test_bottleneck_ops_are_validated(mobile_space):
    data = mobile_space.to_dict()
    with pytest.raises(SpaceError, match="narrower than the block"):
        SearchSpace.from_dict({**data, "ops": ["mha", "bottleneck24x1"]})
    with pytest.raises(SpaceError, match="multiple of 'bottleneck_head_size'"):
        SearchSpace.from_dict({**data, "ops": ["mha", "bottleneck12x1"]})
    with pytest.raises(SpaceError, match="unknown op 'bottleneck8x5'"):
        SearchSpace.from_dict({**data, "ops": ["mha", "bottleneck8x5"]})
    with pytest.raises(SpaceError, match="'bottleneck_norm' must be one of layernorm, nonorm"):
        SearchSpace.from_dict({**data, "bottleneck_norm": "batchnorm"})
    again = SearchSpace.from_dict(mobile_space.to_dict())
    assert again == mobile_space
    assert "bottleneck_norm" not in SearchSpace.load("tiny").to_dict()  # NAS-BERT spaces serialise as before


def test_bottleneck_param_and_flop_formulas_by_hand():
    # w=16, b=8, N=2, ratio 4: in+shared 2*(16*8+8+16), q,k 2*(64+8), v 16*8+8, out 64+8+16,
    # FFNs 2*((8*32+32)+(32*8+8)+16), output 8*16+16+32
    assert op_params("bottleneck8x2", 16, ffn_ratio=4) == 304 + 144 + 136 + 88 + 1136 + 176
    # T=10: 4 T w b + 3 T b b + N 2 T b r b + 2 T T b, doubled
    assert op_flops("bottleneck8x2", 16, 10, ffn_ratio=4) == 2 * (5120 + 1920 + 10240 + 1600)


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("norm,act", [("nonorm", "relu"), ("layernorm", "gelu")])
def test_matches_huggingface_mobilebert_with_ported_weights(norm, act):
    hf_config = MobileBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                 intermediate_size=64, embedding_size=8, intra_bottleneck_size=16,
                                 true_hidden_size=16, num_feedforward_networks=3, max_position_embeddings=40,
                                 normalization_type="no_norm" if norm == "nonorm" else "layer_norm",
                                 hidden_act=act, layer_norm_eps=1e-5)  # HF uses 1e-5 in two norms regardless
    torch.manual_seed(0)
    hf = MobileBertModel(hf_config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    config = NasBertConfig(blocks=[{"width": 32, "ops": ["bottleneck16x3"] * 3}], vocab_size=99, hidden_size=32,
                           ffn_ratio=4, max_position_embeddings=40, bottleneck_head_size=8, bottleneck_norm=norm,
                           bottleneck_act=act, factorized_embedding_size=8, embedding_norm=norm,
                           hidden_act=act, layer_norm_eps=1e-5)
    ours = NasBertModel(config).eval()
    ours.load_state_dict(port_mobilebert(hf.state_dict(), num_layers=3, num_ffn=3, width=32))
    ids = torch.randint(1, 99, (2, 9))
    with torch.no_grad():
        expected = hf(input_ids=ids).last_hidden_state
        got = ours(ids).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def port_mobilebert(hf: dict, *, num_layers: int, num_ffn: int, width: int) -> dict:
    """HF MobileBertModel weights under nasbert's names (identity output adapter)."""
    out = {
        "embeddings.word_embeddings.weight": hf["embeddings.word_embeddings.weight"],
        "embeddings.position_embeddings.weight": hf["embeddings.position_embeddings.weight"],
        "embeddings.token_type_embeddings.weight": hf["embeddings.token_type_embeddings.weight"],
        "embeddings.LayerNorm.weight": hf["embeddings.LayerNorm.weight"],
        "embeddings.LayerNorm.bias": hf["embeddings.LayerNorm.bias"],
        "encoder.output_adapter.weight": torch.eye(width),
        "encoder.output_adapter.bias": torch.zeros(width),
    }
    # HF concatenates [next, this, previous] token vectors before one linear map; a kernel-3 convolution's
    # taps are [previous, this, next]
    linear = hf["embeddings.embedding_transformation.weight"]  # (w, 3e)
    nxt, this, prev = linear.chunk(3, dim=1)
    out["embeddings.embedding_transformation.weight"] = torch.stack([prev, this, nxt], dim=-1)
    out["embeddings.embedding_transformation.bias"] = hf["embeddings.embedding_transformation.bias"]
    names = {
        "bottleneck.input": "bottleneck.input", "bottleneck.attention": "bottleneck.attention",
        "attention.output": "attention.output", "output": "output.bottleneck",
        f"ffn.{num_ffn - 1}.intermediate": "intermediate", f"ffn.{num_ffn - 1}.output": "output",
    }
    for i in range(num_ffn - 1):
        names[f"ffn.{i}.intermediate"] = f"ffn.{i}.intermediate"
        names[f"ffn.{i}.output"] = f"ffn.{i}.output"
    for layer in range(num_layers):
        src, dst = f"encoder.layer.{layer}.", f"encoder.layer.{layer}."
        for q in ("query", "key", "value"):
            for kind in ("weight", "bias"):
                out[f"{dst}attention.self.{q}.{kind}"] = hf[f"{src}attention.self.{q}.{kind}"]
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{ours}.dense.{kind}"] = hf[f"{src}{theirs}.dense.{kind}"]
                if "intermediate" not in ours:
                    out[f"{dst}{ours}.norm.{kind}"] = hf[f"{src}{theirs}.LayerNorm.{kind}"]
    return out


def test_supernet_matches_extracted_model_with_exact_counts(mobile_supernet, mobile_space, mobile_archs):
    ids = torch.randint(5, 99, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    for arch in mobile_archs:
        model = mobile_supernet.extract(arch)
        with torch.no_grad():
            expected = mobile_supernet(ids, mask, arch=arch)
            got = model(ids, mask).last_hidden_state
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=str(arch))
        assert sum(p.numel() for p in model.parameters()) == mobile_space.num_params(arch), str(arch)


def test_flops_match_torch_flop_counter(mobile_supernet, mobile_space, mobile_archs):
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(5, 99, (1, 11))
    for arch in mobile_archs:
        model = mobile_supernet.extract(arch)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(ids)
        assert counter.get_total_flops() == mobile_space.flops(arch, 11), str(arch)


def test_padding_does_not_leak_through_the_factorised_embedding(mobile_supernet):
    arch = Arch.parse("32:bottleneck16x2,sepconv3,identity,identity|16:bottleneck8x1,identity,identity,identity")
    ids = torch.randint(5, 99, (1, 4))
    padded = torch.cat([ids, torch.full((1, 3), 7)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        alone = mobile_supernet(ids, arch=arch)
        with_pad = mobile_supernet(padded, mask, arch=arch)
    torch.testing.assert_close(with_pad[:, :4], alone, atol=1e-5, rtol=0)


def test_factorised_embedding_starts_as_the_best_low_rank_teacher_table(mobile_space, tiny_teacher):
    net = SuperNet.from_teacher(mobile_space, tiny_teacher)
    e = net.embeddings
    lifted = e.word_embeddings.weight @ e.embedding_transformation.weight[:, :, 1].T  # (V, H)
    assert torch.count_nonzero(e.embedding_transformation.weight[:, :, [0, 2]]) == 0
    plain = SuperNet.from_teacher(SearchSpace.load("tiny"), tiny_teacher).embeddings.word_embeddings.weight
    s = torch.linalg.svdvals(plain.double())
    best = s[8:].square().sum().sqrt()  # Eckart-Young: the error of the best rank-8 approximation
    torch.testing.assert_close((lifted.double() - plain.double()).norm(), best, atol=1e-4, rtol=1e-4)


def test_bottleneck_slices_share_and_train_only_their_prefix(mobile_supernet):
    slot = mobile_supernet.slots[0]
    p = slot.sliced("bottleneck8x1", 24)
    assert p["attention.self.value.weight"].shape == (8, 24)
    assert p["output.dense.weight"].shape == (24, 8) and p["output.norm.weight"].shape == (24,)
    assert p["ffn.0.intermediate.dense.weight"].shape == (32, 8)
    assert not any(k.startswith("ffn.1.") for k in p)
    full = slot.bottleneck.layer.attention.self.value.weight
    assert p["attention.self.value.weight"].data_ptr() == full.data_ptr()  # a view, not a copy


def test_hf_reload_and_onnx_match_the_supernet(mobile_supernet, mobile_archs, tiny_teacher_dir, tmp_path):
    from transformers import AutoTokenizer

    arch = mobile_archs[-1]
    path = tmp_path / "model"
    save_hf_model(mobile_supernet.extract(arch), path, tokenizer=AutoTokenizer.from_pretrained(tiny_teacher_dir))
    reloaded = AutoModel.from_pretrained(path)
    ids = torch.randint(5, 99, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    with torch.no_grad():
        expected = mobile_supernet(ids, mask, arch=arch)
        torch.testing.assert_close(reloaded(ids, mask).last_hidden_state, expected, atol=1e-5, rtol=0)
    report = export_onnx(reloaded, tmp_path / "model.onnx")
    assert report["max_abs_diff"] < 1e-4


def test_teacher_parity_checks_the_blocks_after_a_factorised_embedding(mobile_space, tiny_teacher,
                                                                      tiny_teacher_dir):
    """`nasbert run` checks the supernet against the teacher; with MobileBERT's embedding block 0 cannot match,
    so the later blocks are checked alone, on the teacher's states (and a broken block is still caught)."""
    from transformers import AutoTokenizer

    from nasbert.run import teacher_parity

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    net = SuperNet.from_teacher(mobile_space, tiny_teacher).eval()
    assert teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32) < 1e-4
    with torch.no_grad():
        net.slots[-1].ffn.output.bias.add_(torch.randn(32))  # the last block's last FFN, under the teacher arch
    assert teacher_parity(net, tiny_teacher, tokenizer, max_docs=2, seq_len=32) > 0.1
