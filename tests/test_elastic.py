"""The elastic teacher space (per teacher layer: its attention with h of its heads, its FFN with n of its neurons,
either skipped): its paths and validation, the costs of ``mha{h}``, what its models compute (the teacher's own
heads and neurons), the calibrated search objective, and a search that finds a planted better architecture."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasbert import Arch, BlockArch, SearchSpace, SpaceError, SuperNet
from nasbert.export.calibrate import TeacherCalibration
from nasbert.modeling import NasBertConfig
from nasbert.modeling.modeling_nasbert import build_layer
from nasbert.onnxio import export_onnx, onnx_parity
from nasbert.search import run_search
from nasbert.search.calibrated import CalibratedObjective
from nasbert.space import op_flops, op_params

#: every kind of elastic layer: pruned heads and neurons, a skipped layer, an FFN alone, an attention alone
MIXED = Arch.parse("32:mha2,ffn48|32:identity,identity|32:ffn,identity|32:mha3,identity")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread, so that a busy host does not slow every forward pass tenfold."""
    from nasbert.utils import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def elastic(tiny_space) -> SearchSpace:
    """The tiny teacher's elastic space: 4 layers of 4 heads (of 8) and 128 FFN neurons at width 32."""
    return SearchSpace.elastic_for(tiny_space.teacher, name="tiny_elastic")


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    """The tiny teacher with its encoder's weights scaled up, so that every head and neuron moves the output
    (the randomly initialised teacher's sub-layers barely change its residual stream)."""
    model = copy.deepcopy(tiny_teacher)
    with torch.no_grad():
        for module in model.encoder.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(6.0)
    return model.eval()


def _inputs(space, batch=3, seq_len=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, space.teacher.vocab_size, (batch, seq_len), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, 6:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return ids, mask, types


# ---------------------------------------------------------------------------------------------------- the space


def test_elastic_space_has_one_block_per_teacher_layer_at_the_teachers_width(elastic, tiny_space):
    t = tiny_space.teacher
    assert elastic.elastic and elastic.num_blocks == t.num_hidden_layers and elastic.hidden_choices == (32,)
    assert elastic.head_size == 8 and elastic.ffn_ratio == 4 and elastic.slots_per_block == 2
    assert elastic.ops == ("mha1", "mha2", "mha3", "mha", *(f"ffn{16 * q}" for q in range(1, 8)), "ffn", "identity")
    assert elastic.num_paths(0) == 5 * 9  # (4 head counts or skipped) x (8 neuron counts or skipped)
    # every 2nd head count, every quarter of the FFN
    coarse = SearchSpace.elastic_for(t, head_step=2, ffn_steps=4)
    assert coarse.ops == ("mha2", "mha", "ffn32", "ffn64", "ffn96", "ffn", "identity") and coarse.num_paths(0) == 15
    for bad in ({"head_step": 0}, {"head_step": 5}, {"ffn_steps": 0}, {"ffn_steps": 3}):  # 128 % 3 != 0
        with pytest.raises(SpaceError, match="head_step must be"):
            SearchSpace.elastic_for(t, **bad)


def test_elastic_paths_are_attention_then_ffn_each_optional_identity_last(elastic):
    for block in range(elastic.num_blocks):
        paths = list(elastic.iter_block_paths(block))
        assert len(paths) == len(set(paths)) == elastic.num_paths(block)
        for path in paths:
            assert path.width == 32 and len(path.ops) == 2
            kinds = [("mha" if op.startswith("mha") else "ffn") for op in path.layers]
            assert kinds in (["mha", "ffn"], ["mha"], ["ffn"], [])
            assert path.ops[len(path.layers):] == ("identity",) * (2 - len(path.layers))
        assert {BlockArch(32, ("mha", "ffn")), BlockArch(32, ("identity", "identity")),
                BlockArch(32, ("ffn16", "identity")), BlockArch(32, ("mha2", "identity"))} <= set(paths)
    rng = np.random.default_rng(0)
    for _ in range(20):
        elastic.validate(elastic.sample(rng))
    elastic.validate(MIXED)
    assert elastic.teacher_arch() == Arch.parse("|".join(["32:mha,ffn"] * 4))
    assert str(elastic.layer_dropped(2)) == "32:mha,ffn|32:mha,ffn|32:identity,identity|32:identity,identity"
    assert elastic.layer_dropped(4) == elastic.teacher_arch()


@pytest.mark.parametrize("arch, message", [
    ("32:ffn,mha|32:mha,ffn|32:mha,ffn|32:mha,ffn", "not a layer of an elastic space"),  # FFN before attention
    ("32:mha,mha2|32:mha,ffn|32:mha,ffn|32:mha,ffn", "not a layer of an elastic space"),  # two attentions
    ("32:ffn,ffn|32:mha,ffn|32:mha,ffn|32:mha,ffn", "not a layer of an elastic space"),  # two FFNs
    ("32:identity,ffn|32:mha,ffn|32:mha,ffn|32:mha,ffn", "identity ops must come last"),
    ("32:mha,ffn|32:mha,ffn|32:mha,ffn", "3 blocks"),  # one block per teacher layer
    ("16:mha,ffn|32:mha,ffn|32:mha,ffn|32:mha,ffn", "width 16"),
    ("32:sepconv3,ffn|32:mha,ffn|32:mha,ffn|32:mha,ffn", "sepconv3"),
    ("32:mha,ffn,identity|32:mha,ffn|32:mha,ffn|32:mha,ffn", "2 slots"),
])
def test_elastic_validation_refuses_what_is_not_a_teacher_layer(elastic, arch, message):
    with pytest.raises(SpaceError, match=message):
        elastic.validate(Arch.parse(arch))


def test_layer_dropped_needs_an_elastic_space_and_a_depth(elastic, tiny_space):
    for k in (0, 5):
        with pytest.raises(SpaceError, match="1 <= k <= 4"):
            elastic.layer_dropped(k)
    with pytest.raises(SpaceError, match="elastic space"):
        tiny_space.layer_dropped(1)


def _elastic_yaml(tiny_space, **extra) -> dict:
    data = {"name": "mine", "elastic": True, "teacher": dataclasses.asdict(tiny_space.teacher)}
    data.update(extra)
    return data


def test_elastic_space_round_trips_through_yaml(elastic, tiny_space, tmp_path):
    assert SearchSpace.from_dict(yaml.safe_load(elastic.to_yaml())) == elastic
    shrunk = elastic.with_candidates([list(elastic.iter_block_paths(n))[:3] for n in range(4)])
    path = tmp_path / "shrunk.yaml"
    path.write_text(shrunk.to_yaml())
    assert SearchSpace.load(path) == shrunk and SearchSpace.load(path).candidates == shrunk.candidates
    # the keys a YAML needs are its teacher; the derived ones may be given if they agree
    minimal = SearchSpace.from_dict(_elastic_yaml(tiny_space))
    assert minimal.ops == elastic.ops and minimal.num_blocks == 4
    assert SearchSpace.from_dict(_elastic_yaml(tiny_space, num_blocks=4, hidden_choices=[32], head_size=8)).ops == \
        elastic.ops
    chosen = SearchSpace.from_dict(_elastic_yaml(tiny_space, ops=["mha2", "mha", "ffn64", "ffn", "identity"]))
    assert chosen.num_paths(0) == 9 and "mha1" not in chosen.ops
    # the shipped spaces are the elastic spaces of their teachers
    minilm = SearchSpace.load("minilm_l6_elastic")
    assert minilm.ops == SearchSpace.elastic_for(minilm.teacher).ops and minilm.num_paths(0) == 117
    bert = SearchSpace.load("bert_base_elastic")
    assert bert.ops == SearchSpace.elastic_for(bert.teacher).ops and bert.num_blocks == 12


@pytest.mark.parametrize("extra, message", [
    ({"foo": 1}, "unknown key 'foo'"),
    ({"bottleneck_act": "gelu"}, "'bottleneck_act' does not apply to an elastic space"),
    ({"num_blocks": 3}, "an elastic space has num_blocks = 4"),
    ({"hidden_choices": [16, 32]}, "an elastic space has hidden_choices"),
    ({"elastic": "yes"}, "'elastic' must be true or false"),
    ({"ops": ["mha5", "mha", "ffn", "identity"]}, "mha5 keeps 5 heads; the teacher has 4"),
    ({"ops": ["mha4", "mha", "ffn", "identity"]}, "mha4 keeps 4 heads; the teacher has 4"),
    ({"ops": ["mha", "ffn256", "ffn", "identity"]}, "ffn256 keeps 256 FFN neurons; the teacher has 128"),
    ({"ops": ["mha", "sepconv3", "ffn", "identity"]}, "an elastic space lists attentions"),
    ({"ops": ["mha", "ffn"]}, "needs 'identity'"),
    ({"ops": ["mha2", "mha", "identity"]}, "at least one attention and one FFN"),
    ({"ops": "mha"}, "'ops' must be a non-empty list"),
])
def test_elastic_yaml_refuses_bad_keys_and_ops_with_a_clear_error(tiny_space, extra, message):
    with pytest.raises(SpaceError, match=message):
        SearchSpace.from_dict(_elastic_yaml(tiny_space, **extra))


def test_pruned_attentions_belong_to_elastic_spaces_only(tiny_space):
    data = tiny_space.to_dict()
    data["ops"] = [*data["ops"], "mha2"]
    with pytest.raises(SpaceError, match="unknown op 'mha2'"):
        SearchSpace.from_dict(data)
    with pytest.raises(SpaceError, match="'mha2' is not in this space's ops"):
        tiny_space.validate(Arch.parse("32:mha2,ffn,identity,identity|32:mha,ffn,identity,identity"))


# ---------------------------------------------------------------------------------------------------- costs


@pytest.mark.parametrize("op", ["mha1", "mha2", "mha3", "mha", "ffn16", "ffn112", "ffn"])
def test_op_costs_are_the_modules_own(elastic, op):
    t = elastic.teacher
    config = NasBertConfig(blocks=[{"width": 32, "ops": [op]}], vocab_size=t.vocab_size, hidden_size=32,
                           head_size=elastic.head_size, ffn_ratio=elastic.ffn_ratio,
                           max_position_embeddings=t.max_position_embeddings, type_vocab_size=t.type_vocab_size)
    layer = build_layer(config, op, 32).eval()
    assert sum(p.numel() for p in layer.parameters()) == op_params(op, 32, ffn_ratio=4, head_size=8)
    seq_len = 11
    x = torch.randn(1, seq_len, 32)
    keep = torch.ones(1, seq_len, dtype=torch.long)
    additive = torch.zeros(1, 1, 1, seq_len)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(x, additive, keep)
    assert counter.get_total_flops() == op_flops(op, 32, seq_len, ffn_ratio=4, head_size=8)


def test_mha_costs_scale_with_the_heads_and_need_the_head_size():
    full = op_params("mha", 32, ffn_ratio=4, head_size=8)
    assert op_params("mha", 32, ffn_ratio=4) == full  # all heads: no head size needed
    assert op_params("mha2", 32, ffn_ratio=4, head_size=8) == 3 * (32 * 16 + 16) + (16 * 32 + 32) + 2 * 32
    assert op_flops("mha2", 32, 10, ffn_ratio=4, head_size=8) == 2 * (4 * 10 * 32 * 16 + 2 * 10 * 10 * 16)
    with pytest.raises(ValueError, match="head_size"):
        op_params("mha2", 32, ffn_ratio=4)
    with pytest.raises(ValueError, match="head_size"):
        op_flops("mha2", 32, 10, ffn_ratio=4)


def test_an_elastic_models_costs_are_exact(elastic, teacher):
    source = SuperNet.from_teacher(elastic, teacher, reorder="units").eval()
    for arch in (MIXED, elastic.teacher_arch(), elastic.layer_dropped(1)):
        model = source.extract(arch, drop_identity_adapters=True)
        assert model.config.adapters is False
        assert sum(p.numel() for p in model.parameters()) == elastic.num_params(arch, adapters=False)
        ids, mask, types = _inputs(elastic, batch=1, seq_len=13)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=types)
        assert counter.get_total_flops() == elastic.flops(arch, 13, adapters=False)


# ---------------------------------------------------------------------------------------------------- models


def _pruned_by_hand(teacher, arch: Arch, head_size: int):
    """The teacher with, in each layer, the first h heads of an ``mha{h}`` and the first n neurons of an
    ``ffn{n}`` (weights sliced by hand), and a function computing ``arch`` with its layers."""
    model = copy.deepcopy(teacher).eval()

    def sliced(linear: nn.Linear, out: int | None = None, inp: int | None = None) -> nn.Linear:
        weight = linear.weight[:out] if out is not None else linear.weight
        weight = weight[:, :inp] if inp is not None else weight
        bias = linear.bias[:out] if out is not None else linear.bias
        new = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            new.weight.copy_(weight)
            new.bias.copy_(bias)
        return new

    plan = []
    for n, block in enumerate(arch.blocks):
        layer, ops = model.encoder.layer[n], block.layers
        attention = next((op for op in ops if op.startswith("mha")), None)
        ffn = next((op for op in ops if op.startswith("ffn")), None)
        if attention not in (None, "mha"):
            a = int(attention[3:]) * head_size
            s = layer.attention.self
            s.query, s.key, s.value = sliced(s.query, out=a), sliced(s.key, out=a), sliced(s.value, out=a)
            layer.attention.output.dense = sliced(layer.attention.output.dense, inp=a)
        if ffn not in (None, "ffn"):
            i = int(ffn[3:])
            layer.intermediate.dense = sliced(layer.intermediate.dense, out=i)
            layer.output.dense = sliced(layer.output.dense, inp=i)
        plan.append((layer, attention is not None, ffn is not None))

    @torch.no_grad()
    def forward(ids, mask, types):
        x = model.embeddings(input_ids=ids, token_type_ids=types)
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer, attention, ffn in plan:
            if attention:
                x = layer.attention(x, additive)[0]
            if ffn:
                x = layer.output(layer.intermediate(x), x)
        return x

    return forward


@pytest.mark.parametrize("arch", [MIXED, Arch.parse("32:mha1,ffn16|32:mha,ffn112|32:mha2,ffn|32:identity,identity")])
def test_an_extracted_elastic_model_is_the_teachers_kept_heads_and_neurons(elastic, teacher, arch):
    source = SuperNet.from_teacher(elastic, teacher, reorder=False).eval()  # kept units: the first ones
    model = source.extract(arch, drop_identity_adapters=True)
    assert model.config.adapters is False  # no adapter: the teacher's layers alone
    ids, mask, types = _inputs(elastic)
    expected = _pruned_by_hand(teacher, arch, elastic.head_size)(ids, mask, types)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        through_supernet = source(ids, mask, types, arch=arch)
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(through_supernet[keep], expected[keep], atol=1e-5, rtol=0)
    # sanity: the sliced heads and neurons matter, so another choice of them would have shown
    other = Arch(tuple(BlockArch(32, ("mha", "ffn")) for _ in range(4)))
    assert (_pruned_by_hand(teacher, other, elastic.head_size)(ids, mask, types)[keep] - expected[keep]).abs().max() > 1e-2


@pytest.mark.parametrize("reorder", [True, "units"])
def test_supernet_extracted_model_and_onnx_agree_on_an_elastic_arch(elastic, teacher, reorder, tmp_path):
    source = SuperNet.from_teacher(elastic, teacher, reorder=reorder).eval()
    model = source.extract(MIXED, drop_identity_adapters=True)
    # a hidden permutation needs the adapters (those into a skipped layer folded into the next)
    assert model.config.adapters == (False if reorder == "units" else MIXED.adapters)
    ids, mask, types = _inputs(elastic)
    with torch.no_grad():
        expected = source(ids, mask, types, arch=MIXED)
        got = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=0)
    report = export_onnx(model, tmp_path / "elastic.onnx")
    assert report["max_abs_diff"] <= 1e-4
    assert onnx_parity(model, tmp_path / "elastic.onnx", batch=3, seq_len=21) <= 1e-4  # another shape
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "elastic.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                             "token_type_ids": types.numpy()})[0]
    np.testing.assert_allclose(out[keep.numpy()], expected[keep].numpy(), atol=1e-4)


# ---------------------------------------------------------------------------------------------------- objective


class _Predictor:
    """A stand-in latency predictor: each head and FFN neuron costs a fixed time, the embeddings 1 ms."""

    device = {"seq_len": 16}

    def __init__(self, space: SearchSpace):
        self.space = space
        self.teacher_latency_ms = self.predict(space.teacher_arch())

    def predict(self, arch: Arch) -> float:
        ms = 1.0
        for block in arch.blocks:
            for op in block.layers:
                inner = op[3:]
                ms += (int(inner) if inner else 4) * 0.5 if op.startswith("mha") else (int(inner) if inner else 128) / 64
        return ms


@pytest.fixture(scope="module")
def rows(elastic):
    """Calibration rows: token ids (rows, seq_len) of 'text', no padding."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(5, elastic.teacher.vocab_size, (24, 12), generator=g)


@pytest.fixture(scope="module")
def batches(elastic):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, elastic.teacher.vocab_size, (8, 12), generator=g)
    return [{"input_ids": ids[i:i + 4], "attention_mask": torch.ones_like(ids[i:i + 4]),
             "token_type_ids": torch.zeros_like(ids[i:i + 4])} for i in (0, 4)]


@pytest.fixture(scope="module")
def objective(elastic, teacher, rows, batches):
    return CalibratedObjective(elastic, _Predictor(elastic), teacher, calibration=rows, batches=batches)


def test_the_calibrated_objective_scores_the_calibrated_candidate(objective, elastic, teacher, rows, batches):
    arch = Arch.parse("32:mha2,ffn48|32:mha,ffn|32:mha3,identity|32:ffn32,identity")
    ev = objective(arch)
    # by hand: the candidate from the teacher's weights (units ordered), calibrated, 1 - its mean token cosine
    model = SuperNet.from_teacher(elastic, teacher, reorder="units").extract(arch, drop_identity_adapters=True)
    assert TeacherCalibration(teacher, elastic, rows).apply(model, arch) == 4  # mha2, ffn48, mha3, ffn32
    cosines = []
    with torch.no_grad():
        for b in batches:
            keep = b["attention_mask"].bool()
            got, want = model(**b).last_hidden_state[keep], teacher(**b).last_hidden_state[keep]
            cosines.append(float(torch.nn.functional.cosine_similarity(got, want, dim=-1).mean()))
    assert ev.proxy_loss == pytest.approx(1.0 - float(np.mean(cosines)), abs=1e-6)
    assert ev.proxy_loss > 1e-4  # the pruned teacher is measurably not the teacher
    assert objective(elastic.teacher_arch()).proxy_loss == pytest.approx(0.0, abs=1e-6)
    # the model scored and exported has no adapters: its parameters and FLOPs are counted without them
    assert ev.params == sum(p.numel() for p in model.parameters()) == elastic.num_params(arch, adapters=False)
    assert ev.flops == elastic.flops(arch, 16, adapters=False)
    assert ev.latency_ms == objective.predictor.predict(arch)
    # calibrated, the candidate is closer to the teacher than magnitude-pruned
    plain = SuperNet.from_teacher(elastic, teacher, reorder="units").extract(arch, drop_identity_adapters=True)
    assert objective.score(plain) > ev.proxy_loss


def test_the_calibrated_objective_travels_to_another_process_without_its_teacher(objective):
    """What a Ray search worker receives: a pickled copy (the teacher's output-capturing hooks, which Hugging Face
    models carry once they have returned their hidden states, cannot be pickled) that scores as the original."""
    import pickle

    copy = pickle.loads(pickle.dumps(objective))
    assert copy.teacher is None and copy.targets.teacher is None and objective.teacher is not None
    arch = Arch.parse("32:mha2,ffn48|32:mha,ffn|32:mha3,identity|32:ffn32,identity")
    copy._cache.clear()
    assert copy(arch) == objective(arch)


def test_the_calibrated_objective_offers_every_path_and_refuses_bad_settings(objective, elastic, teacher, rows,
                                                                             batches, tiny_space):
    # the sampler's choices cover every path of every layer (45 = 5 attentions x 9 FFNs), each architecture once
    assert math.prod(objective.choice_counts().values()) == 45 ** 4
    rng = np.random.default_rng(3)
    for arch in [elastic.layer_dropped(2), MIXED, *(elastic.sample(rng) for _ in range(10))]:
        assert objective.arch_from_params(objective.params_from_arch(arch)) == arch
    arch = elastic.layer_dropped(2)
    mse = CalibratedObjective(elastic, _Predictor(elastic), teacher, calibration=rows, batches=batches, proxy="mse",
                              source=objective.source)
    model = objective.source.extract(arch, drop_identity_adapters=True)
    with torch.no_grad():
        expected = np.mean([float(torch.nn.functional.mse_loss(model(**b).last_hidden_state,
                                                               teacher(**b).last_hidden_state)) for b in batches])
    assert mse(arch).proxy_loss == pytest.approx(expected, rel=1e-5)
    with pytest.raises(SpaceError, match="not an elastic teacher space"):
        CalibratedObjective(tiny_space, _Predictor(elastic), teacher, calibration=rows, batches=batches)
    with pytest.raises(ValueError, match="proxy must be one of"):
        CalibratedObjective(elastic, _Predictor(elastic), teacher, calibration=rows, batches=batches, proxy="l1")
    with pytest.raises(ValueError, match="at least one validation batch"):
        CalibratedObjective(elastic, _Predictor(elastic), teacher, calibration=rows, batches=[])


# ---------------------------------------------------------------------------------------------------- search


#: the search's target: the coarse space's (below) architecture made clearly the best
PLANTED = Arch.parse("32:mha2,ffn64|32:mha,ffn|32:identity,identity|32:mha2,identity")


def _size(op: str) -> int:
    """A sub-layer's rank by size in the coarse space: skipped 0, half 1, whole 2."""
    return {"identity": 0, "mha2": 1, "ffn64": 1, "mha": 2, "ffn": 2}[op]


def _sublayers(arch: Arch) -> list[str]:
    out = []
    for block in arch.blocks:
        ops = block.layers
        out += [next((op for op in ops if op.startswith(kind)), "identity") for kind in ("mha", "ffn")]
    return out


class _Planted(CalibratedObjective):
    """The calibrated objective with one architecture made clearly the best: its proxy loss lowered by 1, and
    every other's raised by 0.1 per size step between its sub-layers and the planted one's (a landscape a search
    can descend, as real ones are, with the planted architecture at its bottom)."""

    def proxy_loss(self, arch: Arch) -> float:
        steps = sum(abs(_size(a) - _size(b)) for a, b in zip(_sublayers(arch), _sublayers(PLANTED)))
        return super().proxy_loss(arch) + 0.1 * steps - (1.0 if arch == PLANTED else 0.0)


def test_the_search_finds_a_planted_better_architecture(elastic, teacher, rows, batches):
    # half or all of each layer's heads and neurons, or none: 9 paths a layer, 6,561 architectures
    coarse = SearchSpace.elastic_for(elastic.teacher, name="tiny_coarse", head_step=2, ffn_steps=2)
    assert coarse.ops == ("mha2", "mha", "ffn64", "ffn", "identity") and coarse.contains(PLANTED)
    planted = _Planted(coarse, _Predictor(coarse), teacher, calibration=rows, batches=batches)
    assert planted.predictor.predict(PLANTED) * 1.5 <= planted.teacher_latency_ms  # it meets the budget
    result = run_search(planted, budgets=["1.5x"], trials=600, storage="memory", seed=0, population_size=20,
                        show_progress=False, top_k=3)
    best = result.best("1.5x")
    assert best.arch == PLANTED and best.evaluation == planted(PLANTED)
    assert best.evaluation.proxy_loss < 0 and PLANTED in {c.arch for c in result.front}
    # every trial was the calibrated objective's evaluation (the planted one's real loss beneath its bonus)
    assert all(r.evaluation == planted(r.arch) for r in result.trials[:50])
    assert planted.proxy_loss(PLANTED) + 1.0 == pytest.approx(CalibratedObjective.proxy_loss(planted, PLANTED))
    # a search started from given architectures (as the search stage starts from the objective's starting
    # points) evaluates them first, in order; one outside the space is left out
    outside = Arch.parse("32:mha1,ffn16|32:mha,ffn|32:identity,identity|32:identity,identity")
    starts = [coarse.layer_dropped(1), outside, PLANTED, coarse.layer_dropped(3)]
    short = run_search(planted, budgets=["1.5x"], trials=5, storage="memory", seed=1, show_progress=False,
                       enqueue=starts)
    first = [r.arch for r in sorted(short.trials, key=lambda r: r.number)][:3]
    assert first == [coarse.layer_dropped(1), PLANTED, coarse.layer_dropped(3)]
    assert short.best("1.5x").arch == PLANTED
    starting = planted.starting_points()
    assert starting[:3] == [coarse.layer_dropped(k) for k in (1, 2, 3)] and len(set(starting)) == len(starting)
    assert all(coarse.contains(a) for a in starting)
