"""Teacher cuts: each computes exactly the teacher sub-layers it names; the work bound tells a busy host from a fast
model; and the export chooses among an elastic space's candidates on the cosine proxy and measured latency,
recording why."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from transformers import AutoTokenizer

from nasbert import Arch, Family, SearchSpace, SuperNet
from nasbert.data import CorpusConfig, load_corpus
from nasbert.export.calibrate import calibrate
from nasbert.export.cuts import BUSY_MARGIN, cut_arch, cut_name, work_speedup
from nasbert.export.config import WEIGHTS, ExportConfig
from nasbert.export.family_export import (
    COSINE_TIE, ExportInputs, _Candidate, _choice_text, _judged_latency, export_family,
)
from nasbert.search import Evaluation, parse_budgets
from nasbert.training.evaluation import plain_batches, state_cosine, validation_batches, whole_model_loss

DEVICE = {"key": "test-cpu", "engine": "torch", "device": "cpu", "threads": 1, "batch": 1, "seq_len": 16}


@pytest.fixture(scope="module")
def elastic(tiny_space) -> SearchSpace:
    return SearchSpace.elastic_for(tiny_space.teacher, name="tiny_elastic")


def _sublayers(name: str) -> set[int]:
    """The kept sub-layers a cut's name describes (the inverse of cut_name)."""
    head, *rest = name.removeprefix("teacher-").replace("-", " -").replace("+", " +").split()
    top = 2 * int(head.removeprefix("L")) - 1
    kept = set(range(top + 1))
    for part in rest:
        j = 2 * int(part[4:]) + (part[1:4] == "ffn")
        kept = kept | {j} if part[0] == "+" else kept - {j}
    return kept


def _teacher_sublayers(teacher, ids, kept: set[int], inner: int | None = None, every: bool = False) -> torch.Tensor:
    """The teacher's embeddings, then its sub-layers ``kept`` in order, straight from the Hugging Face modules; with
    ``inner``, the top FFN (every FFN with ``every``) on its ``inner`` most important neurons."""
    h = teacher.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
    for j in sorted(kept):
        layer = teacher.encoder.layer[j // 2]
        if j % 2 == 0:
            h = layer.attention(h)[0]
        elif inner is not None and (every or j == max(kept)):
            h = _pruned_ffn(layer, h, inner)
        else:
            h = layer.output(layer.intermediate(h), h)
    return h


def _pruned_ffn(layer, h: torch.Tensor, inner: int) -> torch.Tensor:
    """A teacher layer's FFN (with its residual and LayerNorm), by hand, on its ``inner`` most important neurons."""
    from nasbert.supernet.importance import neuron_order

    state = {k: v for k, v in layer.state_dict().items() if k.startswith(("intermediate.", "output."))}
    keep = neuron_order(state)[:inner]
    act = layer.intermediate.intermediate_act_fn(torch.nn.functional.linear(
        h, layer.intermediate.dense.weight[keep], layer.intermediate.dense.bias[keep]))
    return layer.output.LayerNorm(h + torch.nn.functional.linear(act, layer.output.dense.weight[:, keep],
                                                                 layer.output.dense.bias))


def _check_cut(net, space, teacher, ids, kept, **kw):
    arch = cut_arch(space, kept, **kw)
    model = net.extract(arch, drop_identity_adapters=True)
    assert not model.config.adapters  # a plain stack of teacher sub-layers
    assert sum(p.numel() for p in model.parameters()) == space.num_params(arch, adapters=False)
    with torch.no_grad():
        got = model(input_ids=ids).last_hidden_state
        want = _teacher_sublayers(teacher, ids, set(kept), kw.get("pruned"), kw.get("every", False))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


#: sets of the 8 sub-layers of the tiny teacher with more than one gap below their top, some of them no layer's
MANY_GAPS = [{3}, {1, 2}, {0, 2, 4, 6}, {1, 3, 5, 7}, {2, 5, 6}, {0, 3, 4, 7}]


@pytest.mark.parametrize("reorder", [False, "units"])  # heads and neurons in importance order: the same function
def test_cut_arch_computes_the_teacher_sublayers_it_names(tiny_space, elastic, tiny_teacher, reorder):
    """Every set with at most one gap that the tiny NAS-BERT space can place on slots of its own layers, and in the
    elastic space (one block per layer) every set at all."""
    ids = torch.randint(5, tiny_space.teacher.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    n = 2 * tiny_space.teacher.num_hidden_layers
    every = [set(kept) for size in range(1, n + 1) for kept in itertools.combinations(range(n), size)]
    one_gap = [kept for kept in every if sum(j not in kept for j in range(max(kept))) <= 1]
    assert all(cut_arch(elastic, kept) is not None for kept in every)
    assert len({cut_arch(elastic, kept) for kept in every}) == len(every)  # each set its own architecture
    for space, sets in ((tiny_space, one_gap), (elastic, one_gap + MANY_GAPS)):
        net = SuperNet.from_teacher(space, tiny_teacher, reorder=reorder).eval()
        sets = [kept for kept in sets if cut_arch(space, kept) is not None]
        assert len(sets) > n and space.teacher_arch() in {cut_arch(space, kept) for kept in sets}
        for kept in sets:
            assert _sublayers(cut_name(kept)) == kept
            _check_cut(net, space, tiny_teacher, ids, kept)


def test_pruned_cuts_keep_the_most_important_neurons_of_their_ffns(tiny_space, elastic, tiny_teacher):
    ids = torch.randint(5, tiny_space.teacher.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    for space in (elastic, tiny_space):
        net = SuperNet.from_teacher(space, tiny_teacher, reorder="units").eval()
        for m, inner in itertools.product((2, 4, 6), (32, 64, 96)):  # ending on layer 0's, 1's or 2's FFN
            _check_cut(net, space, tiny_teacher, ids, range(m), pruned=inner)
            _check_cut(net, space, tiny_teacher, ids, range(m + 1), pruned=inner, every=True)
            arch = cut_arch(space, range(m + 1), pruned=inner, every=True)
            assert sum(op == f"ffn{inner}" for b in arch.blocks for op in b.ops) == m // 2
    assert cut_name(range(4), pruned=64) == "teacher-L1+mha1+ffn1@64"
    assert cut_name({0, 1, 3}, pruned=64) == "teacher-L1+ffn1@64"
    assert cut_name(range(5), pruned=64, every=True) == "teacher-L2+mha2@ffn64"
    with pytest.raises(ValueError, match="only a cut that ends on an FFN can prune it; this one ends on mha1"):
        cut_name({0, 1, 2}, pruned=32)
    with pytest.raises(ValueError, match="every FFN pruned needs the neurons to keep"):
        cut_name({0}, pruned=64, every=True)


def test_cut_arch_places_sublayers_only_on_slots_of_their_own_layer(tiny_space, elastic):
    # in the tiny space a kept sub-layer that would land on a slot of another layer is not expressible
    assert cut_arch(tiny_space, {1, 2}) is None  # layer 0's FFN, then layer 1's MHA on slot 1 (layer 0's weights)
    assert cut_arch(tiny_space, {0, 1, 3}) == Arch.parse("32:mha,ffn,ffn,identity|32:identity,identity,identity,"
                                                         "identity")
    # an elastic space has one block per layer: any set is expressible, and the bottom layers are layer_dropped's
    assert cut_arch(elastic, {1, 2}) == Arch.parse("32:ffn,identity|32:mha,identity|32:identity,identity|"
                                                   "32:identity,identity")
    for k in range(1, elastic.teacher.num_hidden_layers + 1):
        assert cut_arch(elastic, range(2 * k)) == elastic.layer_dropped(k)
    assert elastic.layer_dropped(elastic.teacher.num_hidden_layers) == elastic.teacher_arch()


# ------------------------------------------------------------------------------------------------ work bound


def test_the_work_bound_orders_cuts_and_keeps_whole_layer_fractions_just_under_their_ratio(tiny_space):
    n = 2 * tiny_space.teacher.num_hidden_layers
    # smallest first: the bound falls as a cut grows, a pruned top FFN counting as its fraction
    grown = [cut_arch(tiny_space, range(m)) for m in range(1, 4)] + \
        [cut_arch(tiny_space, range(4), pruned=p) for p in (32, 64, 96)] + \
        [cut_arch(tiny_space, range(m)) for m in range(4, n + 1)]
    bounds = [work_speedup(tiny_space, arch, 16) for arch in grown]
    assert bounds == sorted(bounds, reverse=True) and len(set(bounds)) == len(bounds)
    # a cut with a gap that drops an attention keeps more FFN than attention: no bound (it can beat the FLOPs ratio)
    assert work_speedup(tiny_space, cut_arch(tiny_space, {0, 1, 3}), 16) is None
    assert work_speedup(tiny_space, cut_arch(tiny_space, {0, 1, 2, 4}), 16) is not None
    for k in range(1, n // 2):  # k of the L layers: the teacher's embeddings keep it under L / k, not far under
        bound = work_speedup(tiny_space, cut_arch(tiny_space, range(2 * k)), 16)
        assert 0.99 * (n // 2) / k < bound < (n // 2) / k
    assert work_speedup(tiny_space, tiny_space.teacher_arch(), 16) == 1.0
    bottom, pruned, whole = (work_speedup(tiny_space, cut_arch(tiny_space, range(4), pruned=p), 16)
                             for p in (None, 64, 128))
    assert 1 < bottom < pruned < work_speedup(tiny_space, cut_arch(tiny_space, range(3)), 16)
    assert whole == bottom  # the whole FFN "pruned" to all its neurons is the plain cut


def test_the_work_bound_is_the_cuts_own_in_an_elastic_space(tiny_space, elastic):
    """A cut does the same work in either space; in an elastic space fewer heads or neurons bound it higher."""
    for kept in (range(3), range(4), range(6), {0, 1, 2, 4}):
        assert work_speedup(elastic, cut_arch(elastic, kept), 16) == pytest.approx(
            work_speedup(tiny_space, cut_arch(tiny_space, kept), 16))
    assert work_speedup(elastic, elastic.teacher_arch(), 16) == 1.0
    half = work_speedup(elastic, elastic.layer_dropped(2), 16)
    fewer_heads = work_speedup(elastic, Arch.parse("32:mha2,ffn|32:mha1,ffn|32:identity,identity|"
                                                   "32:identity,identity"), 16)
    fewer_neurons = work_speedup(elastic, Arch.parse("32:mha,ffn64|32:mha,ffn32|32:identity,identity|"
                                                     "32:identity,identity"), 16)
    assert half < fewer_heads and half < fewer_neurons
    assert work_speedup(elastic, Arch.parse("32:ffn,identity|32:ffn,identity|32:mha,identity|"
                                            "32:identity,identity"), 16) is None  # more FFN than attention


def _evaluation(space, arch):
    return Evaluation(0.5, 1.0, space.num_params(arch, adapters=False), space.flops(arch, 16))


def test_a_cut_timed_faster_than_its_work_allows_is_judged_at_its_work(elastic, tiny_teacher, tiny_teacher_dir,
                                                                       tmp_path, monkeypatch, caplog):
    """On a busy host the teacher slows down more than a small model: the bottom half of its layers was timed at
    2.39x. The export must not take it as a 2x member; a smaller candidate whose work meets 2x is the member."""
    from nasbert.export import family_export
    from nasbert.latency.models import Measured

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    corpus = load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer, show_progress=False)
    half, smaller = elastic.layer_dropped(2), cut_arch(elastic, range(3))
    timed_speedup = {str(half): 2.39, str(smaller): 2.5}  # the smaller cut's work allows more than 2.5x
    assert work_speedup(elastic, half, 16) < 2.0 < 2.5 < work_speedup(elastic, smaller, 16)

    def busy_host(models, teacher, **kwargs):
        return Measured({key: 10.0 / timed_speedup[key.split(":", 1)[1]] for key in models}, 10.0)

    monkeypatch.setattr(family_export, "measure_models", busy_host)
    (budget,) = parse_budgets(["2x"])
    batches = validation_batches(corpus.valid, tokenizer, batch_size=8, n_batches=1, seed=0)
    teacher_net = SuperNet.from_teacher(elastic, tiny_teacher, reorder="units").eval()

    def export(candidates, out):
        inputs = ExportInputs(supernet=SuperNet.from_teacher(elastic, tiny_teacher).eval(), teacher=tiny_teacher,
                              tokenizer=tokenizer, teacher_name="tiny", space=elastic, device=DEVICE,
                              valid_batches=batches, teacher_supernet=teacher_net)
        export_family(inputs, [budget], {"2x": [(a, _evaluation(elastic, a), t) for t, a in candidates]}, out=out,
                      config=ExportConfig(onnx=False, int8=False))
        return json.loads((out / "family.json").read_text())

    with caplog.at_level("WARNING", logger="nasbert.export.family_export"):
        raw = export([(11, half), (12, smaller)], tmp_path / "family")
    (member,) = raw["models"]
    assert member["arch"] == smaller.to_dict() and member["speedup"] == pytest.approx(2.5)
    assert member["work_speedup"] == pytest.approx(work_speedup(elastic, smaller, 16)) and member["trial"] == 12
    assert "timed_speedup" not in member and "judged at" not in member["choice"]
    rows = {r["arch"]: r for r in raw["candidates"]}
    assert rows[str(half)]["speedup"] == pytest.approx(2.39)  # the record keeps what was timed
    assert rows[str(half)]["work_speedup"] == pytest.approx(work_speedup(elastic, half, 16))
    assert "1 models of the teacher's sub-layers timed faster than their work allows" in caplog.text
    assert f"search #1 (teacher) 2.390x > {work_speedup(elastic, half, 16):.3f}x" in caplog.text
    assert "nasbert pick --measure" in caplog.text

    # where the bound still meets the budget, the candidate is the member, judged (and recorded) at its work's speed-up
    timed_speedup[str(smaller)] = 3.5
    bound = work_speedup(elastic, smaller, 16)
    (member,) = export([(12, smaller)], tmp_path / "family2")["models"]
    assert member["speedup"] == pytest.approx(bound) and member["latency_ms"] == pytest.approx(10.0 / bound)
    assert member["timed_speedup"] == pytest.approx(3.5)
    assert f"it was timed at 3.500x, faster than its work allows, and judged at {bound:.3f}x" in member["choice"]


def test_a_cut_timed_just_over_its_work_bound_is_judged_at_it_without_a_warning(tiny_space, caplog):
    arch = cut_arch(tiny_space, range(3))
    bound = work_speedup(tiny_space, arch, 16)
    cut = _Candidate(arch, "teacher", "search #2", None, None, bound=bound)
    searched = _Candidate(Arch.parse("16:mha,ffn,identity,identity|16:ffn,identity,identity,identity"), "supernet",
                          "search #1", 1.0, 0.5)
    for over, level in ((1.01, "INFO"), (1.0 + 2 * BUSY_MARGIN, "WARNING")):
        caplog.clear()
        with caplog.at_level("INFO", logger="nasbert.export.family_export"):
            judged = _judged_latency({"c": cut, "s": searched}, {"c": 10.0 / (bound * over), "s": 1.0}, 10.0)
        assert judged == {"c": pytest.approx(10.0 / bound), "s": 1.0}  # no bound for a searched model
        (record,) = caplog.records
        assert record.levelname == level and "faster than their work allows" in record.getMessage()


def test_a_member_decided_by_a_third_timing_at_the_edge_says_so(tiny_space):
    cut = _Candidate(cut_arch(tiny_space, range(3)), "teacher", "search #1", None, None, trial=5)
    budget = parse_budgets(["4x"])[0]
    first = {"latency_ms": 40.0 / 4.39, "speedup": 4.39, "runs": [4.39, 3.994, 4.1]}
    text = _choice_text(budget, (0.3, 40.0 / 4.1, cut), [(0.3, 40.0 / 4.1, cut)], 40.0, first)
    assert "timed near the budget's edge three times (4.390x, 3.994x, 4.100x" in text and "the median decided" in text
    assert "(search #1, search trial 5, teacher weights, 4.10x)" in text
    first.pop("runs")
    text = _choice_text(budget, (0.3, 40.0 / 4.1, cut), [(0.3, 40.0 / 4.1, cut)], 40.0, first)
    assert "timed near the budget's edge (4.39x) and again, longer, at 4.10x, which decided" in text


def test_a_candidate_near_a_budgets_edge_is_timed_again_and_the_record_says_so(tiny_space, tiny_teacher,
                                                                              tiny_teacher_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    corpus = load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer, show_progress=False)
    supernet = SuperNet.from_teacher(tiny_space, tiny_teacher).eval()
    arch = Arch.parse("16:mha,ffn,identity,identity|16:ffn,identity,identity,identity")
    budgets = parse_budgets(["1.01x"])
    evaluation = Evaluation(0.5, 1.0, tiny_space.num_params(arch), tiny_space.flops(arch, 16))
    batches = validation_batches(corpus.valid, tokenizer, batch_size=8, n_batches=1, seed=0)
    # a margin of 0.99 puts every candidate slower than 1% of the limit "near" it
    inputs = ExportInputs(supernet=supernet, teacher=tiny_teacher, tokenizer=tokenizer, teacher_name="tiny",
                          space=tiny_space, device=DEVICE, valid_batches=batches)
    export_family(inputs, budgets, {"1.01x": [(arch, evaluation)]}, out=tmp_path / "family", top_k=1,
                  config=ExportConfig(onnx=False, int8=False, edge_margin=0.99))
    raw = json.loads((tmp_path / "family" / "family.json").read_text())
    (row,) = raw["candidates"]
    assert row["first_speedup"] > 0 and row["speedup"] > 0
    (member,) = raw["models"]
    assert f"timed near the budget's edge ({row['first_speedup']:.2f}x)" in member["choice"]
    assert f"at {member['speedup']:.2f}x, which decided" in member["choice"]


def test_weights_must_name_a_known_version_set(tiny_space, elastic, tiny_teacher):
    from nasbert.config import ConfigError
    from nasbert.run import RunConfig

    assert RunConfig.from_dict({"export": {"weights": "both"}}).export.weights == "both"
    with pytest.raises(ConfigError, match=r"export\.weights must be one of \['both', 'supernet', 'teacher'\], got "
                                          r"'trained'"):
        RunConfig.from_dict({"export": {"weights": "trained"}})
    with pytest.raises(ConfigError, match="export.weights must be one of"):
        ExportConfig(weights="trained")
    inputs = ExportInputs(supernet=None, teacher=tiny_teacher, tokenizer=None, teacher_name="tiny", space=elastic,
                          device={}, valid_batches=[])
    for weights in ("teacher", "both"):  # the teacher's weights of an elastic space come from teacher_supernet
        with pytest.raises(ValueError, match=r"teacher_supernet=SuperNet.from_teacher\(space, teacher"):
            export_family(inputs, [], {}, out="unused", config=ExportConfig(weights=weights))


# ------------------------------------------------------------------------------------------------ export

#: candidates of the tiny elastic space: pruned heads and neurons, skipped sub-layers, layer-dropped teachers
SEARCHED = ["32:mha2,ffn64|32:mha,ffn|32:mha3,identity|32:ffn32,identity",
            "32:mha,ffn|32:ffn,identity|32:mha,ffn|32:identity,identity",
            "32:mha,ffn|32:identity,identity|32:identity,identity|32:identity,identity",
            "32:mha1,ffn16|32:mha1,ffn16|32:mha1,ffn16|32:identity,identity"]


@pytest.fixture(scope="module", params=[("teacher", True), ("both", True), ("supernet", False)],
                ids=["teacher-calibrated", "both", "supernet"])
def exported(request, elastic, tiny_teacher, tiny_teacher_dir, tmp_path_factory):
    weights, calibrated = request.param
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    corpus = load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer, show_progress=False)
    supernet = SuperNet.from_teacher(elastic, tiny_teacher).eval()
    teacher_net = SuperNet.from_teacher(elastic, tiny_teacher, reorder="units").eval()
    searched = [Arch.parse(a) for a in SEARCHED]
    budgets = parse_budgets(["1M", "25k"])  # parameter budgets: no timing decides; not every candidate fits 25k
    candidates = {b.name: [(a, _evaluation(elastic, a), 100 + i) for i, a in enumerate(searched)] for b in budgets}
    calibration = corpus.train[:8] if calibrated else None
    batches = validation_batches(corpus.valid, tokenizer, batch_size=8, n_batches=1, seed=0)
    plain = plain_batches(corpus.valid, batch_size=8, n_batches=1)
    out = tmp_path_factory.mktemp("elastic-export") / "family"
    inputs = ExportInputs(supernet=supernet, teacher=tiny_teacher, tokenizer=tokenizer, teacher_name="tiny",
                          space=elastic, device=DEVICE, valid_batches=batches, teacher_supernet=teacher_net,
                          proxy_batches=plain, calibration=calibration)
    export_family(inputs, budgets, candidates, out=out, top_k=len(searched),
                  config=ExportConfig(onnx=False, int8=False, weights=weights))
    # each candidate in each weight version: the teacher's extracted without adapters (and calibrated), or the supernet
    expected = {}
    for arch in searched:
        for source in WEIGHTS[weights]:
            if source == "teacher":
                model = teacher_net.extract(arch, drop_identity_adapters=True)
                if calibration is not None:
                    calibrate(model, arch, elastic, tiny_teacher, calibration)
                net, stitched = model, None
            else:
                model, net, stitched = supernet.extract(arch), supernet, arch
            expected[(source, str(arch))] = {
                "cosine": state_cosine(net, tiny_teacher, stitched, plain),
                "loss": whole_model_loss(net, tiny_teacher, stitched, batches),
                "params": elastic.num_params(arch, adapters=model.config.adapters),
                "bound": work_speedup(elastic, arch, DEVICE["seq_len"]) if source == "teacher" else None}
    return Family.load(out), expected, calibrated


def test_export_takes_the_best_cosine_and_says_why(exported, elastic):
    family, expected, calibrated = exported
    raw = json.loads((family.directory / "family.json").read_text())["models"]
    assert sorted(m["budget"] for m in raw) == ["1M", "25k"] and len({m["path"] for m in raw}) == 2
    budgets = {b.name: b for b in parse_budgets(["1M", "25k"])}
    assert any(not budgets["25k"].allows(1.0, e["params"], 1.0) for e in expected.values())
    taken = []
    for member in sorted(family.models, key=lambda m: m.budget != "25k"):  # the tighter budget chooses first
        arch = Arch.from_dict(member.arch)
        key = (member.source, str(arch))
        feasible = [k for k, e in expected.items() if budgets[member.budget].allows(1.0, e["params"], 1.0)]
        pool = [k for k in feasible if k not in taken] or feasible
        best = max(expected[k]["cosine"] for k in pool)
        assert key in [k for k in pool if expected[k]["cosine"] >= best - COSINE_TIE]  # ties: the faster wins
        taken.append(key)
        assert member.cosine == pytest.approx(expected[key]["cosine"])
        assert member.valid_loss == pytest.approx(expected[key]["loss"])
        assert member.params == expected[key]["params"]
        trial = 100 + SEARCHED.index(str(arch))
        assert member.extra["trial"] == trial
        assert member.choice.startswith(f"highest cosine to the teacher ({member.cosine:.4f}) of {len(pool)} "
                                        f"candidates that meet {member.budget} on measured latency (search #")
        assert f"search trial {trial}, {member.source} weights" in member.choice
        assert ("runner-up" in member.choice) == (len(pool) > 1)
        assert ("; 1 more that meet it are already members of tighter budgets" in member.choice) == (
            len(feasible) - len(pool) == 1)
        # the teacher's weights: a plain stack, bounded by its work, calibrated where it prunes a sub-layer
        config = json.loads((family.member_dir(member) / "config.json").read_text())
        teacher_weights = member.source == "teacher"
        assert (config["adapters"] is False) == teacher_weights
        assert member.extra.get("work_speedup") == pytest.approx(expected[key]["bound"])
        prunes = any(op not in ("mha", "ffn", "identity") for block in arch.blocks for op in block.ops)
        assert ("calibration" in member.extra) == (teacher_weights and calibrated and prunes)
        if "calibration" in member.extra:
            assert member.extra["uncalibrated"]["cosine"] != pytest.approx(member.cosine)
            assert all(r["error_after"] < r["error_before"] for r in member.extra["calibration"])


def test_family_json_lists_every_timed_candidate(exported):
    family, expected, _ = exported
    rows = json.loads((family.directory / "family.json").read_text())["candidates"]
    assert {(r["source"], r["arch"]) for r in rows} == set(expected)  # every candidate in every weight version
    assert [r["latency_ms"] for r in rows] == sorted(r["latency_ms"] for r in rows)
    for r in rows:
        assert r["cosine"] == pytest.approx(expected[(r["source"], r["arch"])]["cosine"])
        assert r["params"] == expected[(r["source"], r["arch"])]["params"]
        # the bound is for the teacher's weights only, and for those that keep at least as much attention as FFN
        assert r.get("work_speedup") == pytest.approx(expected[(r["source"], r["arch"])]["bound"])
    for member in family.models:
        (row,) = [r for r in rows if (r["source"], r["arch"]) == (member.source, str(Arch.from_dict(member.arch)))]
        if "timed_speedup" in member.extra:  # timed faster than its work allows (small models): judged at the bound
            assert row["speedup"] == member.extra["timed_speedup"] > member.extra["work_speedup"]
            assert member.speedup == pytest.approx(member.extra["work_speedup"])
        else:
            assert row["latency_ms"] == member.latency_ms
