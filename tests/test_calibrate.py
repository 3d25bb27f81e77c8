"""Calibrating a teacher cut's pruned FFNs: neurons chosen on the text, output weights refitted by least squares."""

from __future__ import annotations

import pytest
import torch

from nasbert import Arch, SuperNet
from nasbert.export.calibrate import calibrate_cut, pruned_ffns
from nasbert.export.cuts import cut_arch


@pytest.fixture(scope="module")
def teacher_net(tiny_space, tiny_teacher) -> SuperNet:
    return SuperNet.from_teacher(tiny_space, tiny_teacher, reorder="units").eval()


@pytest.fixture(scope="module")
def rows(tiny_space) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(5, tiny_space.teacher.vocab_size, (24, 16), generator=g)


def _cut(net, space, kept, **kw):
    arch = cut_arch(space, kept, **kw)
    return arch, net.extract(arch, drop_identity_adapters=True)


def _states(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def test_pruned_ffns_names_each_pruned_ffn_and_its_teacher_layer(tiny_space, tiny_teacher, teacher_net):
    arch, model = _cut(teacher_net, tiny_space, range(8), pruned=64, every=True)  # every FFN of 4 layers halved
    assert pruned_ffns(model, arch, tiny_space, tiny_teacher) == [(1, 0), (3, 1), (5, 2), (7, 3)]
    arch, model = _cut(teacher_net, tiny_space, range(6), pruned=96)  # only layer 2's FFN pruned
    assert pruned_ffns(model, arch, tiny_space, tiny_teacher) == [(5, 2)]
    arch, model = _cut(teacher_net, tiny_space, range(6))
    assert pruned_ffns(model, arch, tiny_space, tiny_teacher) == []


def test_calibration_brings_the_cut_closer_to_its_unpruned_self(tiny_space, tiny_teacher, teacher_net, rows):
    arch, model = _cut(teacher_net, tiny_space, range(6), pruned=32, every=True)
    _, whole = _cut(teacher_net, tiny_space, range(6))
    held_out = torch.randint(5, tiny_space.teacher.vocab_size, (24, 16), generator=torch.Generator().manual_seed(4))
    reference = _states(whole, held_out)
    before = (_states(model, held_out) - reference).pow(2).sum() / reference.pow(2).sum()
    report = calibrate_cut(model, arch, space=tiny_space, teacher=tiny_teacher, input_ids=rows)
    after = (_states(model, held_out) - reference).pow(2).sum() / reference.pow(2).sum()
    assert [(r.op, r.teacher_layer, r.neurons, r.teacher_neurons, r.tokens) for r in report] == \
        [(1, 0, 32, 128, 24 * 16), (3, 1, 32, 128, 24 * 16), (5, 2, 32, 128, 24 * 16)]
    assert all(r.error_after < r.error_before for r in report)
    assert after < 0.7 * before, (float(before), float(after))


def test_calibrated_ffn_keeps_teacher_neurons_and_solves_the_least_squares(tiny_space, tiny_teacher, teacher_net,
                                                                           rows):
    arch, model = _cut(teacher_net, tiny_space, range(4), pruned=64)  # layers 0-1, layer 1's FFN halved
    untouched = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.layer.3.")}
    captured = []
    handle = model.encoder.layer[3].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    _states(model, rows)
    handle.remove()
    x = captured[0].reshape(-1, 32).double()
    calibrate_cut(model, arch, tiny_space, tiny_teacher, rows, ridge=0.0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in untouched.items())  # only the pruned FFN changed
    ffn, source = model.encoder.layer[3], tiny_teacher.encoder.layer[1]
    # every kept neuron is one of the teacher's, with its input weights and bias as they are
    w_in, b_in = source.intermediate.dense.weight, source.intermediate.dense.bias
    kept = [int(torch.argmin((w_in - row).abs().sum(1))) for row in ffn.intermediate.dense.weight]
    assert len(set(kept)) == 64
    torch.testing.assert_close(ffn.intermediate.dense.weight, w_in[kept], rtol=0, atol=0)
    torch.testing.assert_close(ffn.intermediate.dense.bias, b_in[kept], rtol=0, atol=0)
    # the output weights solve the normal equations: the residual is orthogonal to the kept activations
    with torch.no_grad():
        g = ffn.act(x @ w_in.double().T + b_in.double())
        target = g @ source.output.dense.weight.double().T + source.output.dense.bias.double()
        a = torch.cat([g[:, kept], torch.ones(len(g), 1, dtype=g.dtype)], 1)
        fitted = a[:, :-1] @ ffn.output.dense.weight.double().T + ffn.output.dense.bias.double()
    assert float((a.T @ (target - fitted)).abs().max()) < 1e-3 * float((a.T @ target).abs().max())


def test_a_cut_without_a_pruned_ffn_is_left_alone(tiny_space, tiny_teacher, teacher_net, rows):
    arch, model = _cut(teacher_net, tiny_space, range(5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert calibrate_cut(model, arch, tiny_space, tiny_teacher, rows) == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_bad_input_is_refused(tiny_space, tiny_teacher, teacher_net, rows):
    arch, model = _cut(teacher_net, tiny_space, range(4), pruned=64)
    with pytest.raises(ValueError, match=r"token ids of shape \(rows, seq_len\)"):
        calibrate_cut(model, arch, tiny_space, tiny_teacher, rows[0])
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        calibrate_cut(model, arch, tiny_space, tiny_teacher, rows, ridge=-1.0)
    with pytest.raises(ValueError, match="pass the arch it was extracted from"):
        calibrate_cut(model, cut_arch(tiny_space, range(6), pruned=64), tiny_space, tiny_teacher, rows)
    searched = Arch.parse("24:sepconv5,mha,ffn72,identity|16:ffn,sepconv3,mha,sepconv7")
    adapted = SuperNet.from_teacher(tiny_space, tiny_teacher).eval().extract(searched)
    with pytest.raises(ValueError, match="teacher cut at the teacher's width without adapters"):
        calibrate_cut(adapted, searched, tiny_space, tiny_teacher, rows)
    moved = Arch.parse("32:mha,mha,ffn64,identity|32:identity,identity,identity,identity")  # an FFN in an MHA slot
    model = SuperNet.from_teacher(tiny_space, tiny_teacher, reorder="units").eval().extract(
        moved, drop_identity_adapters=True)
    with pytest.raises(ValueError, match="does not hold a teacher FFN's weights"):
        calibrate_cut(model, moved, tiny_space, tiny_teacher, rows)


def test_the_export_calibrates_a_pruned_cut_member_and_records_it(tiny_space, tiny_teacher, tiny_teacher_dir,
                                                                  teacher_net, tmp_path):
    from transformers import AutoTokenizer

    from nasbert import Family
    from nasbert.data import CorpusConfig, load_corpus
    from nasbert.export.family_export import export_family
    from nasbert.search import parse_budgets
    from nasbert.training.evaluation import state_cosine, validation_batches, whole_model_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    corpus = load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer, show_progress=False)
    pruned, whole = cut_arch(tiny_space, range(4), pruned=64), cut_arch(tiny_space, range(3))
    budgets = parse_budgets(["1M", "60k"])  # parameter budgets: both cuts fit both, and each is one's member
    batches = validation_batches(corpus.valid, tokenizer, batch_size=8, n_batches=1, seed=0)
    device = {"key": "test-cpu", "engine": "torch", "device": "cpu", "threads": 1, "batch": 1, "seq_len": 16}
    calibration = corpus.train[:8]
    export_family(supernet=SuperNet.from_teacher(tiny_space, tiny_teacher).eval(), teacher=tiny_teacher,
                  tokenizer=tokenizer, teacher_name="tiny", space=tiny_space, budgets=budgets,
                  candidates={b.name: [] for b in budgets}, valid_batches=batches, device=device,
                  out=tmp_path / "family", write_onnx=True, teacher_supernet=teacher_net, calibration=calibration,
                  cuts={b.name: [("pruned", pruned, None), ("whole", whole, None)] for b in budgets})
    family = Family.load(tmp_path / "family")
    members = {str(Arch.from_dict(m.arch)): m for m in family.models}
    assert sorted(members) == sorted([str(pruned), str(whole)])
    (record,) = members[str(pruned)].extra["calibration"]
    assert (record["op"], record["teacher_layer"], record["neurons"], record["tokens"]) == (3, 1, 64, 8 * 32)
    assert record["error_after"] < record["error_before"]
    assert "calibration" not in members[str(whole)].extra  # nothing pruned, nothing to calibrate
    # the member's cosine and loss are the calibrated model's; the cut's own are kept beside them
    member = members[str(pruned)]
    uncalibrated = teacher_net.extract(pruned, drop_identity_adapters=True)
    assert member.extra["uncalibrated"]["cosine"] == pytest.approx(
        state_cosine(uncalibrated, tiny_teacher, None, batches))
    assert member.extra["uncalibrated"]["valid_loss"] == pytest.approx(
        whole_model_loss(uncalibrated, tiny_teacher, None, batches))

    expected = teacher_net.extract(pruned, drop_identity_adapters=True)
    calibrate_cut(expected, pruned, tiny_space, tiny_teacher, calibration)
    written = {k: v for k, v in _load(tmp_path / "family" / members[str(pruned)].path).items()}
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(written[key], value, rtol=0, atol=0)
    assert member.valid_loss == pytest.approx(whole_model_loss(expected, tiny_teacher, None, batches))
    assert member.cosine == pytest.approx(state_cosine(expected, tiny_teacher, None, batches))
    assert member.cosine != pytest.approx(member.extra["uncalibrated"]["cosine"])
    assert (tmp_path / "family" / members[str(pruned)].onnx).is_file()  # export_onnx checked it against PyTorch
    card = (tmp_path / "family" / members[str(pruned)].path / "README.md").read_text()
    assert "its pruned FFNs calibrated on unlabelled text" in card
    whole_card = (tmp_path / "family" / members[str(whole)].path / "README.md").read_text()
    assert "kept as they are (a teacher cut)" in whole_card


def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_calibrate_rows_is_a_run_setting_checked_on_load():
    from nasbert.config import ConfigError
    from nasbert.run import RunConfig

    assert RunConfig.from_dict({}).export.calibrate_rows == 512
    assert RunConfig.from_dict({"export": {"calibrate_rows": 0}}).export.calibrate_rows == 0
    with pytest.raises(ConfigError, match=r"export\.calibrate_rows must be an integer >= 0 \(0: no calibration\)"):
        RunConfig.from_dict({"export": {"calibrate_rows": -1}})
    for bad in (1.5, True):
        with pytest.raises(ConfigError, match=r"export\.calibrate_rows' must be an integer"):
            RunConfig.from_dict({"export": {"calibrate_rows": bad}})


def test_magnitude_neurons_without_a_refit_are_the_cut_as_extracted(tiny_space, tiny_teacher, teacher_net, rows):
    """The two steps can be measured apart; with neither, calibration gives back the supernet's own cut."""
    arch, model = _cut(teacher_net, tiny_space, range(8), pruned=64, every=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = calibrate_cut(model, arch, tiny_space, tiny_teacher, rows, neurons="magnitude", refit=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(r.error_after == pytest.approx(r.error_before) for r in report) and len(report) == 4
    refitted = calibrate_cut(model, arch, tiny_space, tiny_teacher, rows, neurons="magnitude")
    assert all(r.error_after < r.error_before for r in refitted)
    with pytest.raises(ValueError, match="neurons must be 'output' or 'magnitude'"):
        calibrate_cut(model, arch, tiny_space, tiny_teacher, rows, neurons="random")


def _pre_norm_sum(model, op, ids):
    """What ``model.encoder.layer[op]`` (an FFN) adds up before its LayerNorm (its input plus its branch), and its
    input."""
    captured = []
    handle = model.encoder.layer[op].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    _states(model, ids)
    handle.remove()
    ffn, x = model.encoder.layer[op], captured[0]
    with torch.no_grad():
        return x + ffn.output.dense(ffn.act(ffn.intermediate.dense(x))), x


def test_the_states_target_makes_up_for_the_pruned_layers_below(tiny_space, tiny_teacher, teacher_net, rows):
    """With ``target="states"`` an FFN is refitted to give what the unpruned cut has after it, not what the whole
    FFN gives on the cut's own inputs. The lowest pruned FFN sees the unpruned cut's inputs, so both targets agree
    there; above it, the states target is the least-squares fit of the unpruned cut's pre-norm sum."""
    arch, ffn_model = _cut(teacher_net, tiny_space, range(4), pruned=32, every=True)  # layers 0-1, both FFNs at 1/4
    _, states_model = _cut(teacher_net, tiny_space, range(4), pruned=32, every=True)
    _, whole = _cut(teacher_net, tiny_space, range(4))
    calibrate_cut(ffn_model, arch, tiny_space, tiny_teacher, rows)
    report = calibrate_cut(states_model, arch, tiny_space, tiny_teacher, rows, target="states")
    low = [k for k in states_model.state_dict() if not k.startswith("encoder.layer.3.")]
    assert all(torch.allclose(states_model.state_dict()[k], ffn_model.state_dict()[k], atol=1e-6) for k in low)
    top = [k for k in states_model.state_dict() if k.startswith("encoder.layer.3.output.dense")]
    assert not all(torch.allclose(states_model.state_dict()[k], ffn_model.state_dict()[k]) for k in top)
    reference = _pre_norm_sum(whole, 3, rows)[0]
    errors = [float((_pre_norm_sum(m, 3, rows)[0] - reference).pow(2).sum()) for m in (ffn_model, states_model)]
    assert errors[1] < 0.9 * errors[0], errors
    goal = reference - _pre_norm_sum(states_model, 3, rows)[1]  # the branch that would meet it exactly
    assert report[1].error_after == pytest.approx(errors[1] / float(goal.pow(2).sum()), rel=1e-3)
    with pytest.raises(ValueError, match="target must be 'ffn' or 'states'"):
        calibrate_cut(states_model, arch, tiny_space, tiny_teacher, rows, target="teacher")
