"""Teacher cuts: each computes exactly the teacher sub-layers it names, and the export chooses among them and the
search's candidates on the cosine proxy, recording why."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from nasbert import Arch, Family, SearchSpace, SuperNet
from nasbert.data import CorpusConfig, load_corpus
from nasbert.export.cuts import THIN_FFN_MAX_LAYERS, cut_arch, cut_name, cut_size, teacher_cuts, work_speedup
from nasbert.export.family_export import COSINE_TIE, CUT_WEIGHTS, _Candidate, _choice_text, _contenders, export_family
from nasbert.training.evaluation import plain_batches, state_cosine, validation_batches, whole_model_loss
from nasbert.search import Evaluation, parse_budgets


def _sublayers(name: str) -> set[int]:
    """The kept sub-layers a cut's name describes (the inverse of cut_name)."""
    head, *rest = name.removeprefix("teacher-").replace("-", " -").replace("+", " +").split()
    top = 2 * int(head.removeprefix("L")) - 1
    kept = set(range(top + 1))
    for part in rest:
        j = 2 * int(part[4:]) + (part[1:4] == "ffn")
        kept = kept | {j} if part[0] == "+" else kept - {j}
    return kept


def _teacher_sublayers(teacher, ids, kept: set[int]) -> torch.Tensor:
    """The teacher's embeddings, then its sub-layers ``kept`` in order, straight from the Hugging Face modules."""
    h = teacher.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
    for j in sorted(kept):
        layer = teacher.encoder.layer[j // 2]
        h = layer.attention(h)[0] if j % 2 == 0 else layer.output(layer.intermediate(h), h)
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


@pytest.mark.parametrize("reorder", [False, "units"])  # heads and neurons in importance order: the same function
def test_every_cut_computes_the_teacher_sublayers_it_names(tiny_space, tiny_teacher, reorder):
    teacher_net = SuperNet.from_teacher(tiny_space, tiny_teacher, reorder=reorder).eval()
    ids = torch.randint(5, tiny_space.teacher.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    cuts = teacher_cuts(tiny_space)
    n = 2 * tiny_space.teacher.num_hidden_layers
    assert len({name for name, _ in cuts}) == len(cuts) == len({a for _, a in cuts})
    assert tiny_space.teacher_arch() not in {a for _, a in cuts}
    for name, arch in cuts:
        kept = _sublayers(name)
        assert cut_name(kept) == name and cut_arch(tiny_space, kept) == arch
        model = teacher_net.extract(arch, drop_identity_adapters=True)
        assert not model.config.adapters  # a plain stack of teacher sub-layers
        assert sum(p.numel() for p in model.parameters()) == tiny_space.num_params(arch, adapters=False)
        with torch.no_grad():
            got = model(input_ids=ids).last_hidden_state
            want = _teacher_sublayers(tiny_teacher, ids, kept)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # every bottom prefix of sub-layers is a cut (the layer-dropped teachers among them)
    prefixes = {cut_name(range(m)) for m in range(1, n)}
    assert prefixes <= {name for name, _ in cuts}
    assert {"teacher-L1", "teacher-L2", "teacher-L3"} <= prefixes


def test_pruned_cuts_keep_the_most_important_neurons_of_their_top_ffn(tiny_space, tiny_teacher):
    teacher_net = SuperNet.from_teacher(tiny_space, tiny_teacher, reorder="units").eval()
    ids = torch.randint(5, tiny_space.teacher.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    plain = teacher_cuts(tiny_space, max_gaps=0)
    cuts = teacher_cuts(tiny_space, max_gaps=0, prune_ffn=True)
    pruned = [(name, arch) for name, arch in cuts if "@" in name]
    assert [c for c in cuts if "@" not in c[0]] == plain and not any("@" in name for name, _ in plain)
    # every gap-free cut that ends on an FFN (the teacher's last one too), at 1/4, 1/2 and 3/4 of its 128 neurons
    assert len(pruned) == 3 * tiny_space.teacher.num_hidden_layers
    assert tiny_space.pruned_ffn_inners() == (32, 64, 96)
    names = [name for name, _ in cuts]
    assert names[names.index("teacher-L1+mha1"):names.index("teacher-L2") + 1] == [
        "teacher-L1+mha1", "teacher-L1+mha1+ffn1@32", "teacher-L1+mha1+ffn1@64", "teacher-L1+mha1+ffn1@96",
        "teacher-L2"]  # ordered by size: a pruned FFN counts as its fraction
    for name, arch in pruned:
        stem, inner = name.rsplit("@", 1)
        top = 2 * int(stem.rsplit("ffn", 1)[1]) + 1
        kept, inner = set(range(top + 1)), int(inner)
        assert cut_name(kept, pruned=inner) == name and cut_arch(tiny_space, kept, pruned=inner) == arch
        model = teacher_net.extract(arch, drop_identity_adapters=True)
        assert not model.config.adapters
        assert sum(p.numel() for p in model.parameters()) == tiny_space.num_params(arch, adapters=False)
        h = _teacher_sublayers(tiny_teacher, ids, kept - {top})
        want = _pruned_ffn(tiny_teacher.encoder.layer[top // 2], h, inner)
        with torch.no_grad():
            got = model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="only a cut that ends on an FFN can prune it; this one ends on mha1"):
        cut_name({0, 1, 2}, pruned=32)


def test_cuts_with_every_ffn_pruned_keep_each_ffns_most_important_neurons(tiny_space, tiny_teacher):
    teacher_net = SuperNet.from_teacher(tiny_space, tiny_teacher, reorder="units").eval()
    ids = torch.randint(5, tiny_space.teacher.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    n = 2 * tiny_space.teacher.num_hidden_layers
    assert tiny_space.every_ffn_inners() == (16, 48, 64, 96)  # 1/8, 3/8, half and 3/4 of the teacher's 128
    top_pruned = teacher_cuts(tiny_space, max_gaps=0, prune_ffn=True)
    cuts = teacher_cuts(tiny_space, max_gaps=0, prune_ffn=True, prune_every=True)
    pruned = [(name, arch) for name, arch in cuts if "@ffn" in name]
    assert [c for c in cuts if "@ffn" not in c[0]] == top_pruned
    # every gap-free prefix with an FFN, the whole teacher too, at each size; at half and 3/4, not the bottom layer:
    # with its one FFN on top, it is a top-pruned cut (teacher-L0+mha0+ffn0@64; 3/8 is no top-pruned size); under
    # half only the prefixes of at most THIN_FFN_MAX_LAYERS layers (6 sub-layers)
    assert THIN_FFN_MAX_LAYERS == 3
    expected = [cut_name(range(m), pruned=p, every=True) for p in (64, 96) for m in range(3, n + 1)] + \
        [cut_name(range(m), pruned=p, every=True) for p in (16, 48) for m in range(2, 2 * THIN_FFN_MAX_LAYERS + 1)]
    assert [name for name, _ in pruned] == sorted(expected, key=lambda name: [c[0] for c in cuts].index(name))
    assert {"teacher-L4@ffn64", "teacher-L1+mha1@ffn64", "teacher-L3@ffn48", "teacher-L1@ffn48",
            "teacher-L3@ffn16", "teacher-L2+mha2@ffn16"} <= set(dict(pruned))
    assert {"teacher-L4@ffn96", "teacher-L3+mha3@ffn96"} <= set(dict(pruned))
    assert {"teacher-L1@ffn64", "teacher-L1@ffn96", "teacher-L4@ffn16", "teacher-L3+mha3@ffn16", "teacher-L4@ffn48",
            "teacher-L3+mha3@ffn48"}.isdisjoint(dict(cuts))
    for name, arch in pruned:
        inner = int(name.rsplit("@ffn", 1)[1])
        kept = _sublayers(name.removesuffix(f"@ffn{inner}"))
        assert cut_arch(tiny_space, kept, pruned=inner, every=True) == arch
        assert arch.num_layers == len(kept) and sum(op == f"ffn{inner}" for b in arch.blocks for op in b.ops) == sum(
            j % 2 for j in kept)
        model = teacher_net.extract(arch, drop_identity_adapters=True)
        assert sum(p.numel() for p in model.parameters()) == tiny_space.num_params(arch, adapters=False)
        h = tiny_teacher.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        for j in sorted(kept):  # the teacher by hand: each FFN on its most important neurons
            layer = tiny_teacher.encoder.layer[j // 2]
            if j % 2 == 0:
                h = layer.attention(h)[0]
                continue
            h = _pruned_ffn(layer, h, inner)
        with torch.no_grad():
            got = model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(got, h.detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="every FFN pruned needs the neurons to keep"):
        cut_name({0}, pruned=64, every=True)


def test_cuts_are_exactly_the_expressible_bottom_sets_with_at_most_one_gap(tiny_space):
    n = 2 * tiny_space.teacher.num_hidden_layers
    expected = set()
    for size in range(1, n):
        for kept in itertools.combinations(range(n), size):
            gaps = [j for j in range(max(kept)) if j not in kept]
            if len(gaps) <= 1 and cut_arch(tiny_space, kept) is not None:
                expected.add(cut_arch(tiny_space, kept))
    assert {a for _, a in teacher_cuts(tiny_space)} == expected
    # a kept sub-layer that would land on a slot of another layer is not expressible
    assert cut_arch(tiny_space, {1, 2}) is None  # layer 0's FFN, then layer 1's MHA on slot 1 (layer 0's weights)
    assert cut_arch(tiny_space, {0, 1, 3}) == Arch.parse("32:mha,ffn,ffn,identity|32:identity,identity,identity,"
                                                         "identity")


def test_cuts_without_gaps_are_the_bottom_sublayers(tiny_space):
    n = 2 * tiny_space.teacher.num_hidden_layers
    prefixes = {cut_arch(tiny_space, range(m)) for m in range(1, n)} - {None}
    assert {a for _, a in teacher_cuts(tiny_space, max_gaps=0)} == prefixes
    assert prefixes < {a for _, a in teacher_cuts(tiny_space)}
    with pytest.raises(ValueError, match="max_gaps must be 0 or 1"):
        teacher_cuts(tiny_space, max_gaps=2)


def test_on_the_built_in_teacher_the_largest_cut_each_budgets_work_allows_is_the_measured_best():
    """The export's cut for each budget (the largest, by ``cut_size``, whose work meets it; the default options) is
    the one the fine-tuned panel ranked first among the cuts that meet it (docs/benchmarks.md): at 2x the bottom 4
    attentions with 3/4 of the 3 FFNs between them, calibrated, before the bottom 3 layers with 3/4 of the third FFN,
    and that before the bottom 4 layers with every FFN halved; at 3x the bottom 3 layers with every FFN at 3/8,
    calibrated, before the bottom 2 layers with 3/4 of the second FFN; at 4x the bottom 3 layers with every FFN at
    1/8, calibrated, before the bottom 2 layers with both FFNs halved."""
    space = SearchSpace.load("minilm_l6")
    cuts = teacher_cuts(space, max_gaps=0, prune_ffn=True, prune_every=True)
    largest = {}
    for budget in (2.0, 3.0, 4.0):
        fits = [(name, arch) for name, arch in cuts if work_speedup(space, arch, 128) >= budget]
        largest[budget] = max(fits, key=lambda c: cut_size(space, c[1]))[0]
    assert largest == {2.0: "teacher-L3+mha3@ffn1152", 3.0: "teacher-L3@ffn576", 4.0: "teacher-L3@ffn192"}
    # deeper cuts with every FFN under half lost CoLA (the bottom 4 and 6 layers at 1/8: 3.36x, 2.24x bounds): not
    # offered, nor the bottom 5 attentions with 3/8 of the 4 FFNs between them (2.15x bound)
    assert {"teacher-L4@ffn192", "teacher-L6@ffn192", "teacher-L4+mha4@ffn576"}.isdisjoint(dict(cuts))
    sizes = {name: cut_size(space, arch) for name, arch in cuts}
    # ... a top attention counts: layer 0 with layer 1's attention before layer 0 alone
    assert sizes["teacher-L1"] < sizes["teacher-L1+mha1"]
    assert sizes["teacher-L4@ffn768"] < sizes["teacher-L2+mha2+ffn2@1152"] < sizes["teacher-L3+mha3@ffn1152"]
    assert sizes["teacher-L1+mha1+ffn1@1152"] < sizes["teacher-L3@ffn576"]
    assert sizes["teacher-L2@ffn768"] < sizes["teacher-L3@ffn192"]


def test_a_space_without_identity_has_no_cuts():
    data = SearchSpace.load("tiny").to_dict()
    data["ops"] = ["mha", "ffn", "sepconv3"]
    with pytest.raises(ValueError, match=r"teacher cuts need .*\(missing: identity\).*export.teacher_cuts: false"):
        teacher_cuts(SearchSpace.from_dict(data))


# ------------------------------------------------------------------------------------------------ export


@pytest.fixture(scope="module", params=[(False, "both"), (True, "both"), (True, "teacher")],
                ids=["cuts-compete", "cuts-first", "teacher-weights"])
def exported(request, tiny_space, tiny_teacher, tiny_teacher_dir, tmp_path_factory):
    cuts_first, cut_weights = request.param
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    corpus = load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer, show_progress=False)
    supernet = SuperNet.from_teacher(tiny_space, tiny_teacher).eval()
    teacher_net = SuperNet.from_teacher(tiny_space, tiny_teacher, reorder=False).eval()
    searched = [Arch.parse("24:sepconv5,mha,ffn,identity|16:ffn,sepconv3,mha,sepconv7"),
                Arch.parse("16:mha,ffn,identity,identity|16:ffn,identity,identity,identity")]
    evaluation = {str(a): Evaluation(0.5, 1.0, tiny_space.num_params(a), tiny_space.flops(a, 16)) for a in searched}
    budgets = parse_budgets(["1M", "60k"])  # parameter budgets: every candidate fits, no timing decides
    candidates = {b.name: [(a, evaluation[str(a)]) for a in searched] for b in budgets}
    cuts = {b.name: [(name, arch, 1.0) for name, arch in teacher_cuts(tiny_space)
                     if name in ("teacher-L1", "teacher-L2-mha1", "teacher-L3")] for b in budgets}
    batches = validation_batches(corpus.valid, tokenizer, batch_size=8, n_batches=1, seed=0)
    plain = plain_batches(corpus.valid, batch_size=8, n_batches=1)
    device = {"key": "test-cpu", "engine": "torch", "device": "cpu", "threads": 1, "batch": 1, "seq_len": 16}
    out = tmp_path_factory.mktemp("cuts-export") / "family"
    export_family(supernet=supernet, teacher=tiny_teacher, tokenizer=tokenizer, teacher_name="tiny",
                  space=tiny_space, budgets=budgets, candidates=candidates, valid_batches=batches, device=device,
                  out=out, top_k=2, write_onnx=False, cuts=cuts, teacher_supernet=teacher_net, proxy_batches=plain,
                  cuts_first=cuts_first, cut_weights=cut_weights)
    nets = {"supernet": supernet, "teacher": teacher_net}
    cosines = {("supernet", str(a)): state_cosine(supernet, tiny_teacher, a, plain) for a in searched}
    for _, arch, _ in cuts["1M"]:  # a cut competes in both versions, or with the teacher's weights only
        for source in CUT_WEIGHTS[cut_weights]:
            cosines[(source, str(arch))] = state_cosine(nets[source], tiny_teacher, arch, plain)
    return Family.load(out), nets, cosines, batches, plain, cuts_first


def test_export_takes_the_best_cosine_and_says_why(exported, tiny_teacher, tiny_space):
    family, nets, cosines, batches, plain, cuts_first = exported
    cut_archs = {str(a) for name, a in teacher_cuts(tiny_space)
                 if name in ("teacher-L1", "teacher-L2-mha1", "teacher-L3")}
    raw = json.loads((family.directory / "family.json").read_text())["models"]
    assert sorted(m["budget"] for m in raw) == ["1M", "60k"] and len({m["path"] for m in raw}) == 2
    ranked = sorted(cosines, key=lambda key: -cosines[key])
    budgets = {b.name: b for b in parse_budgets(["1M", "60k"])}
    taken = []
    for member in sorted(family.models, key=lambda m: m.budget != "60k"):  # the tighter budget chooses first
        arch = Arch.from_dict(member.arch)
        budget = budgets[member.budget]
        feasible = [key for key in ranked if key not in taken and budget.allows(
            1.0, nets[key[0]].space.num_params(Arch.parse(key[1]), adapters=None if key[0] == "supernet" else False),
            1.0)]
        # of the cuts only the largest that fits competes (both versions); the search's candidates too, unless a
        # cut fits and cuts come first
        sizes = [Arch.parse(key[1]).num_layers for key in feasible if key[1] in cut_archs]
        contenders = [key for key in feasible if (key[1] not in cut_archs and not (cuts_first and sizes))
                      or (key[1] in cut_archs and Arch.parse(key[1]).num_layers == max(sizes))]
        searched_left = len(feasible) - len(contenders) - sum(
            1 for key in feasible if key[1] in cut_archs and Arch.parse(key[1]).num_layers != max(sizes))
        tied = [key for key in contenders if cosines[key] >= cosines[contenders[0]] - COSINE_TIE]  # the faster wins
        assert len(feasible) >= 2 and (member.source, str(arch)) in tied
        taken.append((member.source, str(arch)))
        assert member.cosine == pytest.approx(state_cosine(nets[member.source], tiny_teacher, arch, plain))
        assert member.valid_loss == pytest.approx(whole_model_loss(nets[member.source], tiny_teacher, arch, batches))
        assert ("cut_size" in member.extra) == (cuts_first and str(arch) in cut_archs)  # for `nasbert pick`
        if cuts_first and sizes:
            assert member.choice.startswith(f"the largest teacher cut that meets {member.budget} on measured latency")
            assert f"cosine {member.cosine:.4f})" in member.choice
        else:
            assert member.choice.startswith(f"highest cosine to the teacher ({member.cosine:.4f})")
        assert ("runner-up" in member.choice) == (len(contenders) > 1)
        # the 60k member also fits 1M, and a looser budget prefers a model no tighter budget took
        assert ("; 1 more that meet it are already members of tighter budgets" in member.choice) == (
            member.budget == "1M")
        assert (f"the search's {searched_left} candidates that do were left out" in member.choice) == (
            searched_left > 0)
        assert searched_left > 0 or not cuts_first  # the search's candidates fit both budgets
    # a teacher-sourced member is the teacher's own sub-layers: a plain stack, no adapters
    for member in family.models:
        config = json.loads((family.member_dir(member) / "config.json").read_text())
        assert (config["adapters"] is not False) == (member.source == "supernet")


def test_family_json_lists_every_timed_candidate(exported):
    family, nets, cosines, batches, plain, _ = exported
    rows = json.loads((family.directory / "family.json").read_text())["candidates"]
    assert {(r["source"], r["arch"]) for r in rows} == set(cosines)  # both versions of each cut, the search's own
    assert [r["latency_ms"] for r in rows] == sorted(r["latency_ms"] for r in rows)
    for r in rows:
        assert r["cosine"] == pytest.approx(cosines[(r["source"], r["arch"])])
    for member in family.models:
        (row,) = [r for r in rows if (r["source"], r["arch"]) == (member.source, str(Arch.from_dict(member.arch)))]
        assert row["params"] == member.params
        if "timed_speedup" in member.extra:  # timed faster than its work allows (small models): judged at the bound
            assert row["speedup"] == member.extra["timed_speedup"] > member.extra["work_speedup"]
            assert member.speedup == pytest.approx(member.extra["work_speedup"])
        else:
            assert row["latency_ms"] == member.latency_ms


def test_a_cut_that_meets_the_budget_comes_before_a_searched_model_with_a_higher_cosine(tiny_space):
    archs = dict(teacher_cuts(tiny_space))

    def cut(name, size):
        return _Candidate(archs[name], "teacher", name, None, None, cut=True, size=size)

    big, small = cut("teacher-L3", 3), cut("teacher-L1", 1)
    searched = _Candidate(Arch.parse("16:mha,ffn,identity,identity|16:ffn,identity,identity,identity"), "supernet",
                          "search #1", 1.0, 0.5)
    feasible = [(0.30, 1.0, big), (0.35, 0.5, small), (0.32, 0.8, searched)]
    assert _contenders(feasible, cuts_first=True) == [feasible[0]]
    assert _contenders(feasible, cuts_first=False) == [feasible[2], feasible[0]]
    assert _contenders([feasible[2]], cuts_first=True) == [feasible[2]]  # no cut meets the budget: the search's
    (budget,) = parse_budgets(["2x"])
    text = _choice_text(budget, feasible[0], feasible, teacher_ms=4.0, cuts_first=True)
    assert text.startswith("the largest teacher cut that meets 2x on measured latency (teacher-L3, teacher weights, "
                           "4.00x, cosine 0.3000)")
    assert "1 versions of smaller cuts left out" in text
    assert "the search's 1 candidates that do were left out (export.cuts_first; the best of them by cosine: " \
           "search #1 at 0.3200, 5.00x)" in text
    text = _choice_text(budget, feasible[2], feasible, 4.0, cuts_first=False)
    assert text.startswith("highest cosine to the teacher (0.3200) of 2 candidates that meet 2x")
    assert "left out (export.cuts_first" not in text


def test_cut_weights_must_name_a_known_version_set(tiny_space, tiny_teacher):
    from nasbert.config import ConfigError
    from nasbert.run import RunConfig

    assert RunConfig.from_dict({"export": {"cut_weights": "both"}}).export.cut_weights == "both"
    with pytest.raises(ConfigError, match=r"export\.cut_weights must be one of \['both', 'teacher'\], got 'trained'"):
        RunConfig.from_dict({"export": {"cut_weights": "trained"}})
    with pytest.raises(ValueError, match="cut_weights must be one of"):
        export_family(supernet=None, teacher=tiny_teacher, tokenizer=None, teacher_name="tiny", space=tiny_space,
                      budgets=[], candidates={}, valid_batches=[], device={}, out="unused", cut_weights="trained")


def test_a_candidate_near_a_budgets_edge_is_timed_again_and_the_record_says_so(tiny_space, tiny_teacher,
                                                                              tiny_teacher_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    corpus = load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer, show_progress=False)
    supernet = SuperNet.from_teacher(tiny_space, tiny_teacher).eval()
    arch = Arch.parse("16:mha,ffn,identity,identity|16:ffn,identity,identity,identity")
    budgets = parse_budgets(["1.01x"])
    evaluation = Evaluation(0.5, 1.0, tiny_space.num_params(arch), tiny_space.flops(arch, 16))
    batches = validation_batches(corpus.valid, tokenizer, batch_size=8, n_batches=1, seed=0)
    device = {"key": "test-cpu", "engine": "torch", "device": "cpu", "threads": 1, "batch": 1, "seq_len": 16}
    # a margin of 0.99 puts every candidate slower than 1% of the limit "near" it
    export_family(supernet=supernet, teacher=tiny_teacher, tokenizer=tokenizer, teacher_name="tiny",
                  space=tiny_space, budgets=budgets, candidates={"1.01x": [(arch, evaluation)]},
                  valid_batches=batches, device=device, out=tmp_path / "family", top_k=1, write_onnx=False,
                  edge_margin=0.99)
    raw = json.loads((tmp_path / "family" / "family.json").read_text())
    (row,) = raw["candidates"]
    assert row["first_speedup"] > 0 and row["speedup"] > 0
    (member,) = raw["models"]
    assert f"timed near the budget's edge ({row['first_speedup']:.2f}x)" in member["choice"]
    assert f"at {member['speedup']:.2f}x, which decided" in member["choice"]


def test_the_export_considers_pruned_cuts_where_the_latency_profile_can_predict_them(tiny_space, tiny_teacher,
                                                                                     tmp_path, caplog):
    from nasbert.latency import LatencyPredictor, LatencyTable, features
    from nasbert.latency.table import table_keys
    from nasbert.run import RunConfig
    from nasbert.run.stages import _cuts_for

    rng = np.random.default_rng(0)
    entries = {key: float(rng.uniform(0.5, 1.5)) for key in table_keys(tiny_space)}
    entries.update({f"ffn{i}@32": entries["ffn@32"] * i / 128 for i in tiny_space.pruned_ffn_inners()})
    archs = [tiny_space.sample(rng) for _ in range(20)]
    every = teacher_cuts(tiny_space, max_gaps=0, prune_ffn=True, prune_every=True)  # the export's defaults
    old = {k: v for k, v in entries.items() if "ffn@" in k or not k.startswith("ffn")}
    # without the work bound the predictor decides which cuts can meet a budget; with it (the default), the bound
    for name, table, work_bound in (("old", old, False), ("new", entries, False), ("bound", entries, True)):
        table = LatencyTable(table)
        measured = [float(features(a, table).sum()) for a in archs]  # any law the predictor can fit
        predictor = LatencyPredictor.fit(table, archs, measured)
        predictor.save(tmp_path / name)
        teacher_ms = predictor.predict(tiny_space.teacher_arch())
        # a budget whose limit a mid-sized cut misses by 5% on the prediction: within the edge margin (10%)
        over = teacher_ms / predictor.predict(cut_arch(tiny_space, range(3))) * 1.05
        config = RunConfig.from_dict({"space": "tiny", "search": {"budgets": ["1.2x", f"{over:.4f}x"], "top_k": 4},
                                      "export": {"teacher_cut_ffn": True, "work_bound": work_bound}})
        budgets = parse_budgets(config.search.budgets)
        with caplog.at_level("WARNING", logger="nasbert.run.stages"):
            caplog.clear()
            cuts, teacher_net = _cuts_for(config, tiny_space, budgets, tmp_path / name, tiny_teacher, 16)
        names = {n for chosen in cuts.values() for n, _, _ in chosen}
        assert work_bound or cut_name(range(3)) in {n for n, _, _ in cuts[budgets[1].name]}
        if name == "old":  # a profile from before pruned FFNs had entries: left out, with the fix named
            assert names and not any("@" in n for n in names)
            assert "no entries for pruned FFNs" in caplog.text and "nasbert latency --run RUN --force" in caplog.text
            continue
        assert any("@" in n for n in names) and not caplog.text
        # per budget the top_k largest (then slowest) cuts whose work can meet it (without a work bound: predicted
        # under its limit, or over it by less than the edge margin): the export takes the largest that meets it
        for budget in budgets:
            limit = budget.latency_limit_ms(teacher_ms)

            def can_meet(a):
                bound = work_speedup(tiny_space, a, 16) if work_bound else None
                return teacher_ms / bound <= limit if bound else predictor.predict(a) <= limit * 1.1

            near = sorted(((cut_size(tiny_space, a), predictor.predict(a)) for _, a in every if can_meet(a)),
                          reverse=True)
            assert [cut_size(tiny_space, a) for _, a, _ in cuts[budget.name]] == [size for size, _ in near[:4]]
            assert [ms for _, _, ms in cuts[budget.name]] == pytest.approx([ms for _, ms in near[:4]])
    # the cuts come from the teacher with its heads and neurons in importance order, its hidden channels as they are
    assert teacher_net is not None and not teacher_net.training
    arch = cut_arch(tiny_space, range(2), pruned=32)
    assert teacher_net.extract(arch, drop_identity_adapters=True).config.adapters is False


# ------------------------------------------------------------------------------------------------ work bound


def test_the_work_bound_orders_cuts_and_keeps_whole_layer_fractions_just_under_their_ratio(tiny_space):
    n = 2 * tiny_space.teacher.num_hidden_layers
    cuts = teacher_cuts(tiny_space, max_gaps=0, prune_ffn=True)
    bounds = [work_speedup(tiny_space, arch, 16) for _, arch in cuts]
    assert bounds == sorted(bounds, reverse=True)  # cuts come smallest first: the bound falls as they grow
    # a cut with a gap that drops an attention keeps more FFN than attention: no bound (it can beat the FLOPs ratio)
    gapped = dict(teacher_cuts(tiny_space, max_gaps=1))
    assert work_speedup(tiny_space, gapped["teacher-L2-mha1"], 16) is None
    assert work_speedup(tiny_space, gapped["teacher-L2+mha2-ffn1"], 16) is not None
    for k in range(1, n // 2):  # k of the L layers: the teacher's embeddings keep it under L / k, not far under
        bound = work_speedup(tiny_space, cut_arch(tiny_space, range(2 * k)), 16)
        assert 0.99 * (n // 2) / k < bound < (n // 2) / k
    assert work_speedup(tiny_space, tiny_space.teacher_arch(), 16) == 1.0
    bottom, pruned, whole = (work_speedup(tiny_space, cut_arch(tiny_space, range(4), pruned=p), 16)
                             for p in (None, 64, 128))
    assert pruned == work_speedup(tiny_space, cut_arch(tiny_space, range(4), pruned=64), 16)
    assert 1 < bottom < pruned < work_speedup(tiny_space, cut_arch(tiny_space, range(3)), 16)
    assert whole == bottom  # the whole FFN "pruned" to all its neurons is the plain cut


def test_a_cut_timed_faster_than_its_work_allows_is_judged_at_its_work(tiny_space, tiny_teacher,
                                                                       tiny_teacher_dir, tmp_path, monkeypatch,
                                                                       caplog):
    """On a busy host the teacher slows down more than a small model: the bottom half of its layers was timed at
    2.39x. The export must not take it as a 2x member; a smaller cut whose work meets 2x is the member."""
    from nasbert.export import family_export
    from nasbert.latency.models import Measured

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    corpus = load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer, show_progress=False)
    half, smaller = cut_arch(tiny_space, range(4)), cut_arch(tiny_space, range(3))
    names = {str(half): cut_name(range(4)), str(smaller): cut_name(range(3))}
    timed_speedup = {str(half): 2.39, str(smaller): 2.5}  # the smaller cut's work allows more than 2.5x
    assert work_speedup(tiny_space, half, 16) < 2.0 < 2.5 < work_speedup(tiny_space, smaller, 16)

    def busy_host(models, teacher, **kwargs):
        return Measured({key: 10.0 / timed_speedup[key.split(":", 1)[1]] for key in models}, 10.0)

    monkeypatch.setattr(family_export, "measure_models", busy_host)
    (budget,) = parse_budgets(["2x"])
    batches = validation_batches(corpus.valid, tokenizer, batch_size=8, n_batches=1, seed=0)
    device = {"key": "test-cpu", "engine": "torch", "device": "cpu", "threads": 1, "batch": 1, "seq_len": 16}
    with caplog.at_level("WARNING", logger="nasbert.export.family_export"):
        export_family(supernet=SuperNet.from_teacher(tiny_space, tiny_teacher).eval(), teacher=tiny_teacher,
                      tokenizer=tokenizer, teacher_name="tiny", space=tiny_space, budgets=[budget],
                      candidates={"2x": []}, valid_batches=batches, device=device, out=tmp_path / "family",
                      write_onnx=False, teacher_supernet=SuperNet.from_teacher(tiny_space, tiny_teacher,
                                                                               reorder="units").eval(),
                      cuts={"2x": [(names[str(a)], a, None) for a in (half, smaller)]})
    raw = json.loads((tmp_path / "family" / "family.json").read_text())
    (member,) = raw["models"]
    assert member["arch"] == smaller.to_dict() and member["speedup"] == pytest.approx(2.5)
    assert member["work_speedup"] == pytest.approx(work_speedup(tiny_space, smaller, 16))
    assert "timed_speedup" not in member and "judged at" not in member["choice"]
    rows = {r["label"]: r for r in raw["candidates"]}
    assert rows[names[str(half)]]["speedup"] == pytest.approx(2.39)  # the record keeps what was timed
    assert rows[names[str(half)]]["work_speedup"] == pytest.approx(work_speedup(tiny_space, half, 16))
    assert "1 teacher cuts timed faster than their work allows" in caplog.text
    assert f"{names[str(half)]} (teacher) 2.390x > {work_speedup(tiny_space, half, 16):.3f}x" in caplog.text
    assert "nasbert pick --measure" in caplog.text

    # where the bound still meets the budget, the cut is the member, judged (and recorded) at its work's speed-up
    timed_speedup[str(smaller)] = 3.5
    bound = work_speedup(tiny_space, smaller, 16)
    export_family(supernet=SuperNet.from_teacher(tiny_space, tiny_teacher).eval(), teacher=tiny_teacher,
                  tokenizer=tokenizer, teacher_name="tiny", space=tiny_space, budgets=[budget],
                  candidates={"2x": []}, valid_batches=batches, device=device, out=tmp_path / "family2",
                  write_onnx=False, teacher_supernet=SuperNet.from_teacher(tiny_space, tiny_teacher,
                                                                           reorder="units").eval(),
                  cuts={"2x": [(names[str(smaller)], smaller, None)]})
    (member,) = json.loads((tmp_path / "family2" / "family.json").read_text())["models"]
    assert member["speedup"] == pytest.approx(bound) and member["latency_ms"] == pytest.approx(10.0 / bound)
    assert member["timed_speedup"] == pytest.approx(3.5)
    assert f"it was timed at 3.500x, faster than its work allows, and judged at {bound:.3f}x" in member["choice"]


def test_a_cut_timed_just_over_its_work_bound_is_judged_at_it_without_a_warning(tiny_space, caplog):
    from nasbert.export.cuts import BUSY_MARGIN
    from nasbert.export.family_export import _judged_latency

    arch = cut_arch(tiny_space, range(3))
    bound = work_speedup(tiny_space, arch, 16)
    cut = _Candidate(arch, "teacher", cut_name(range(3)), None, None, cut=True, size=3.0, bound=bound)
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
    from nasbert.export.family_export import _choice_text

    arch = cut_arch(tiny_space, range(3))
    cut = _Candidate(arch, "teacher", cut_name(range(3)), None, None, cut=True, size=3.0)
    budget = parse_budgets(["4x"])[0]
    first = {"latency_ms": 40.0 / 4.39, "speedup": 4.39, "runs": [4.39, 3.994, 4.1]}
    text = _choice_text(budget, (0.3, 40.0 / 4.1, cut), [(0.3, 40.0 / 4.1, cut)], 40.0, first)
    assert "timed near the budget's edge three times (4.390x, 3.994x, 4.100x" in text and "the median decided" in text
    first.pop("runs")
    text = _choice_text(budget, (0.3, 40.0 / 4.1, cut), [(0.3, 40.0 / 4.1, cut)], 40.0, first)
    assert "timed near the budget's edge (4.39x) and again, longer, at 4.10x, which decided" in text
