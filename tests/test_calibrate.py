"""Calibrating a model of the teacher's own sub-layers: heads and neurons chosen on the text, output weights refitted
by least squares, bottom-up in one pass (and, for the search, once per sub-layer and size on the teacher's inputs)."""

from __future__ import annotations

import pytest
import torch

from nasbert import Arch, SearchSpace, SuperNet
from nasbert.export.calibrate import TeacherCalibration, calibrate, teacher_sublayers

#: every sub-layer pruned or skipped somewhere: heads and neurons of all four layers, layer 3's attention skipped
MIXED = Arch.parse("32:mha2,ffn64|32:mha,ffn|32:mha3,identity|32:ffn32,identity")
#: every attention and FFN of the teacher kept, each with some of its heads or neurons
PRUNED = Arch.parse("32:mha2,ffn32|32:mha1,ffn32|32:mha2,ffn64|32:mha3,ffn32")


@pytest.fixture(scope="module")
def space(tiny_space) -> SearchSpace:
    return SearchSpace.elastic_for(tiny_space.teacher, name="tiny_elastic")


@pytest.fixture(scope="module")
def teacher_net(space, tiny_teacher) -> SuperNet:
    return SuperNet.from_teacher(space, tiny_teacher, reorder="units").eval()


@pytest.fixture(scope="module")
def rows(tiny_space) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(5, tiny_space.teacher.vocab_size, (24, 16), generator=g)


def _extract(net, arch):
    return net.extract(arch, drop_identity_adapters=True)


def _states(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def _same(model, state: dict) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_teacher_sublayers_names_each_ops_kind_and_teacher_layer(space, teacher_net):
    assert teacher_sublayers(_extract(teacher_net, MIXED), MIXED, space) == [
        (0, "mha", 0), (1, "ffn", 0), (2, "mha", 1), (3, "ffn", 1), (4, "mha", 2), (5, "ffn", 3)]
    dropped = space.layer_dropped(2)
    assert teacher_sublayers(_extract(teacher_net, dropped), dropped, space) == [
        (0, "mha", 0), (1, "ffn", 0), (2, "mha", 1), (3, "ffn", 1)]


def test_calibration_lowers_each_pruned_sublayers_error_and_brings_the_model_closer_to_the_teacher(
        space, tiny_teacher, teacher_net, rows):
    model = _extract(teacher_net, PRUNED)
    held_out = torch.randint(5, space.teacher.vocab_size, (24, 16), generator=torch.Generator().manual_seed(4))
    reference = _states(tiny_teacher, held_out)
    before = (_states(model, held_out) - reference).pow(2).sum() / reference.pow(2).sum()
    report = calibrate(model, PRUNED, space, tiny_teacher, rows)
    after = (_states(model, held_out) - reference).pow(2).sum() / reference.pow(2).sum()
    tokens = 24 * 16
    assert [(r.op, r.kind, r.teacher_layer, r.units, r.teacher_units, r.tokens) for r in report] == [
        (0, "mha", 0, 2, 4, tokens), (1, "ffn", 0, 32, 128, tokens), (2, "mha", 1, 1, 4, tokens),
        (3, "ffn", 1, 32, 128, tokens), (4, "mha", 2, 2, 4, tokens), (5, "ffn", 2, 64, 128, tokens),
        (6, "mha", 3, 3, 4, tokens), (7, "ffn", 3, 32, 128, tokens)]
    assert all(0 <= r.error_after < r.error_before for r in report)
    assert after < before, (float(before), float(after))


def _kept_rows(weight: torch.Tensor, teacher_weight: torch.Tensor, unit: int) -> list[int]:
    """Which of the teacher's units (``unit`` rows each) the model's ``weight`` holds, in its order."""
    mine, theirs = weight.view(-1, unit, weight.shape[1]), teacher_weight.view(-1, unit, weight.shape[1])
    return [int(torch.argmin((theirs - u).abs().sum(dim=(1, 2)))) for u in mine]


@pytest.mark.parametrize("kind", ["ffn", "mha"])
def test_the_refit_solves_the_least_squares_at_the_bottom_layer(space, tiny_teacher, teacher_net, rows, kind):
    """Teacher layer 0's pruned sub-layer sees the teacher's own inputs: its kept units are the teacher's, as they
    are, and its output weights are the least-squares fit of the whole sub-layer's output on those inputs."""
    arch = Arch.parse(("32:mha,ffn64" if kind == "ffn" else "32:mha2,ffn") + "|32:mha,ffn" * 3)
    op = 1 if kind == "ffn" else 0
    model = _extract(teacher_net, arch)
    untouched = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(f"encoder.layer.{op}.")}
    (record,) = calibrate(model, arch, space, tiny_teacher, rows, ridge=0.0)
    assert (record.op, record.kind, record.teacher_layer) == (op, kind, 0)
    assert _same(model, untouched)  # only the pruned sub-layer changed
    source, layer = tiny_teacher.encoder.layer[0], model.encoder.layer[op]
    with torch.no_grad():  # the teacher's own modules: its input, every unit's output, the whole output dense's
        x = tiny_teacher.embeddings(input_ids=rows, token_type_ids=torch.zeros_like(rows))
        if kind == "ffn":
            x = source.attention(x)[0]
            g, dense = source.intermediate(x), source.output.dense
            inputs = [(layer.intermediate.dense, source.intermediate.dense)]
            unit = 1
        else:
            g, dense = source.attention.self(x)[0], source.attention.output.dense
            inputs = [(getattr(layer.self, n), getattr(source.attention.self, n)) for n in ("query", "key", "value")]
            unit = space.head_size
        g = g.reshape(-1, g.shape[-1]).double()
        target = g @ dense.weight.double().T + dense.bias.double()
    kept = _kept_rows(inputs[0][0].weight, inputs[0][1].weight, unit)
    assert len(set(kept)) == record.units
    cols = torch.tensor([u * unit + c for u in kept for c in range(unit)])
    for mine, teachers in inputs:  # the kept units' input weights and biases, as the teacher has them
        torch.testing.assert_close(mine.weight, teachers.weight[cols], rtol=0, atol=0)
        torch.testing.assert_close(mine.bias, teachers.bias[cols], rtol=0, atol=0)
    a = torch.cat([g[:, cols], torch.ones(len(g), 1, dtype=g.dtype)], dim=1)
    solution = torch.linalg.lstsq(a, target).solution  # (kept + 1, H): the direct solve
    out = layer.output.dense
    with torch.no_grad():
        fitted = a[:, :-1] @ out.weight.double().T + out.bias.double()
    error = float((fitted - target).pow(2).sum() / target.pow(2).sum())
    best = float((a @ solution - target).pow(2).sum() / target.pow(2).sum())
    # the Gram matrix is summed in float32 batches, so the weights match the direct solve to float32 precision
    # only where units are nearly collinear; the fit itself is the least-squares optimum
    assert error == pytest.approx(best, rel=1e-3, abs=1e-7)
    torch.testing.assert_close(out.weight.double(), solution[:-1].T, rtol=0.05, atol=1e-3)
    assert record.error_after == pytest.approx(error, rel=1e-3, abs=1e-7)


def test_magnitude_units_without_a_refit_are_the_model_as_extracted(space, tiny_teacher, teacher_net, rows):
    """The two steps can be measured apart; with neither, calibration gives back the magnitude-pruned model."""
    model = _extract(teacher_net, PRUNED)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = calibrate(model, PRUNED, space, tiny_teacher, rows, units="magnitude", refit=False)
    assert _same(model, before) and len(report) == 8
    assert all(r.error_after == pytest.approx(r.error_before) for r in report)
    refitted = calibrate(model, PRUNED, space, tiny_teacher, rows, units="magnitude")
    assert all(r.error_after < r.error_before for r in refitted)
    with pytest.raises(ValueError, match="units must be 'output' or 'magnitude'"):
        calibrate(model, PRUNED, space, tiny_teacher, rows, units="random")


def test_bad_input_is_refused(space, tiny_space, tiny_teacher, teacher_net, rows):
    model = _extract(teacher_net, MIXED)
    with pytest.raises(ValueError, match=r"token ids of shape \(rows, seq_len\)"):
        calibrate(model, MIXED, space, tiny_teacher, rows[0])
    with pytest.raises(ValueError, match=r"token ids of shape \(rows, seq_len\)"):
        TeacherCalibration(tiny_teacher, space, rows[:0])
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        calibrate(model, MIXED, space, tiny_teacher, rows, ridge=-1.0)
    with pytest.raises(ValueError, match="pass the arch it was extracted from"):
        calibrate(model, PRUNED, space, tiny_teacher, rows)
    adapted = SuperNet.from_teacher(space, tiny_teacher).eval().extract(MIXED)  # the trained supernet's version
    with pytest.raises(ValueError, match="teacher's sub-layers at the teacher's width without adapters"):
        calibrate(adapted, MIXED, space, tiny_teacher, rows)
    searched = Arch.parse("32:mha,sepconv3,ffn64,identity|32:identity,identity,identity,identity")  # not the teacher's
    model = _extract(SuperNet.from_teacher(tiny_space, tiny_teacher, reorder="units").eval(), searched)
    with pytest.raises(ValueError, match="sepconv3 in slot 1 is not one of the teacher's sub-layers"):
        calibrate(model, searched, tiny_space, tiny_teacher, rows)


@pytest.mark.parametrize("arch", [Arch.parse("32:mha,ffn|32:mha,ffn|32:mha,ffn|32:identity,identity"),
                                  Arch.parse("32:ffn,identity|32:mha,identity|32:identity,identity|32:mha,ffn")],
                         ids=["layer-dropped", "skipped-sublayers"])
def test_a_model_without_a_pruned_sublayer_is_left_alone(space, tiny_teacher, teacher_net, rows, arch):
    model = _extract(teacher_net, arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert calibrate(model, arch, space, tiny_teacher, rows) == []
    assert _same(model, before)
    assert TeacherCalibration(tiny_teacher, space, rows[:4]).apply(model, arch) == 0
    assert _same(model, before)


@pytest.mark.parametrize("first", ["mha2", "mha,ffn48"])
def test_teacher_calibration_matches_calibrate_where_both_see_the_teachers_inputs(space, tiny_teacher, teacher_net,
                                                                                   rows, first):
    """Teacher layer 0's inputs are the teacher's in any model, so fitting it once on the teacher's states gives
    what the bottom-up pass gives; above a pruned sub-layer the inputs differ, and so do the two fits."""
    pairs = {"mha2": "32:mha2,ffn", "mha,ffn48": "32:mha,ffn48"}
    arch = Arch.parse(pairs[first] + "|32:mha,ffn|32:mha,identity|32:identity,identity")
    looked_up, walked = _extract(teacher_net, arch), _extract(teacher_net, arch)
    calib = TeacherCalibration(tiny_teacher, space, rows)
    assert calib.apply(looked_up, arch) == 1
    (record,) = calibrate(walked, arch, space, tiny_teacher, rows)
    for key, value in walked.state_dict().items():
        torch.testing.assert_close(looked_up.state_dict()[key], value, rtol=0, atol=1e-5, msg=key)
    keep, solution = calib.solve(0, record.kind, record.units)
    width = space.head_size if record.kind == "mha" else 1
    assert len(keep) == record.units and solution.shape == (record.units * width + 1, space.teacher.hidden_size)
    # layer 1's FFN pruned too: its inputs come from the calibrated layer 0, not the teacher's, in the bottom-up pass
    above = Arch.parse(pairs[first] + "|32:mha,ffn64|32:mha,identity|32:identity,identity")
    looked_up, walked = _extract(teacher_net, above), _extract(teacher_net, above)
    assert calib.apply(looked_up, above) == 2 and len(calibrate(walked, above, space, tiny_teacher, rows)) == 2
    low = [k for k in walked.state_dict() if k.startswith(("encoder.layer.0.", "encoder.layer.1."))]
    assert all(torch.allclose(looked_up.state_dict()[k], walked.state_dict()[k], atol=1e-5) for k in low)
    top = "encoder.layer.3.output.dense.weight"
    assert not torch.allclose(looked_up.state_dict()[top], walked.state_dict()[top], atol=1e-5)


def test_the_export_calibrates_a_pruned_member_and_records_it(space, tiny_teacher, tiny_teacher_dir, teacher_net,
                                                              tmp_path):
    from transformers import AutoTokenizer

    from nasbert import Family
    from nasbert.data import CorpusConfig, load_corpus
    from nasbert.export.config import ExportConfig
    from nasbert.export.family_export import ExportInputs, export_family
    from nasbert.search import Evaluation, parse_budgets
    from nasbert.training.evaluation import state_cosine, validation_batches, whole_model_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    corpus = load_corpus(CorpusConfig(seq_len=32, max_documents=12), tokenizer, show_progress=False)
    pruned = Arch.parse("32:mha2,ffn|32:mha,ffn64|32:identity,identity|32:identity,identity")
    whole = space.layer_dropped(1)
    budgets = parse_budgets(["1M", "60k"])  # parameter budgets: both fit both, and each is one's member
    batches = validation_batches(corpus.valid, tokenizer, batch_size=8, n_batches=1, seed=0)
    device = {"key": "test-cpu", "engine": "torch", "device": "cpu", "threads": 1, "batch": 1, "seq_len": 16}
    calibration = corpus.train[:8]
    evaluation = {str(a): Evaluation(0.5, 1.0, space.num_params(a, adapters=False), space.flops(a, 16))
                  for a in (pruned, whole)}
    trials = {str(pruned): 7, str(whole): 3}
    inputs = ExportInputs(supernet=SuperNet.from_teacher(space, tiny_teacher).eval(), teacher=tiny_teacher,
                          tokenizer=tokenizer, teacher_name="tiny", space=space, device=device, valid_batches=batches,
                          teacher_supernet=teacher_net, calibration=calibration)
    export_family(inputs, budgets, {b.name: [(a, evaluation[str(a)], trials[str(a)]) for a in (pruned, whole)]
                                    for b in budgets},
                  out=tmp_path / "family", config=ExportConfig(onnx=True, int8=False))
    family = Family.load(tmp_path / "family")
    members = {str(Arch.from_dict(m.arch)): m for m in family.models}
    assert sorted(members) == sorted([str(pruned), str(whole)])
    assert {m.source for m in family.models} == {"teacher"}
    for arch, member in members.items():
        assert member.extra["trial"] == trials[arch] and f"search trial {trials[arch]}" in member.choice
    member = members[str(pruned)]
    records = member.extra["calibration"]
    assert [(r["op"], r["kind"], r["teacher_layer"], r["units"], r["tokens"]) for r in records] == [
        (0, "mha", 0, 2, 8 * 32), (3, "ffn", 1, 64, 8 * 32)]
    assert all(r["error_after"] < r["error_before"] for r in records)
    assert "calibration" not in members[str(whole)].extra  # nothing pruned, nothing to calibrate
    # the member's cosine and loss are the calibrated model's; the magnitude-pruned model's are kept beside them
    uncalibrated = _extract(teacher_net, pruned)
    assert member.extra["uncalibrated"]["cosine"] == pytest.approx(
        state_cosine(uncalibrated, tiny_teacher, None, batches))
    assert member.extra["uncalibrated"]["valid_loss"] == pytest.approx(
        whole_model_loss(uncalibrated, tiny_teacher, None, batches))
    expected = _extract(teacher_net, pruned)
    calibrate(expected, pruned, space, tiny_teacher, calibration)
    written = _load(tmp_path / "family" / member.path)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(written[key], value, rtol=0, atol=0)
    assert member.cosine == pytest.approx(state_cosine(expected, tiny_teacher, None, batches))
    assert member.valid_loss == pytest.approx(whole_model_loss(expected, tiny_teacher, None, batches))
    assert member.cosine != pytest.approx(member.extra["uncalibrated"]["cosine"])
    assert (tmp_path / "family" / member.onnx).is_file()  # export_onnx checked it against PyTorch
    assert "calibrated on unlabelled text" in (tmp_path / "family" / member.path / "README.md").read_text()
    whole_card = (tmp_path / "family" / members[str(whole)].path / "README.md").read_text()
    assert "calibrated on unlabelled text" not in whole_card


def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_calibrate_rows_is_a_run_setting_checked_on_load():
    from nasbert.config import ConfigError
    from nasbert.run import RunConfig

    assert RunConfig.from_dict({"export": {"calibrate_rows": 0}}).export.calibrate_rows == 0
    assert RunConfig.from_dict({"export": {"calibrate_rows": 64}}).export.calibrate_rows == 64
    with pytest.raises(ConfigError, match=r"export\.calibrate_rows must be an integer >= 0 \(0: no calibration\)"):
        RunConfig.from_dict({"export": {"calibrate_rows": -1}})
    for bad in (1.5, True):
        with pytest.raises(ConfigError, match=r"export\.calibrate_rows' must be an integer"):
            RunConfig.from_dict({"export": {"calibrate_rows": bad}})
    # the search's calibration (every sub-layer, once per size) has its own rows, at least one
    assert RunConfig.from_dict({"search": {"calibrate_rows": 16}}).search.calibrate_rows == 16
    with pytest.raises(ConfigError, match=r"search\.calibrate_rows and search\.proxy_batches must be at least 1"):
        RunConfig.from_dict({"search": {"calibrate_rows": 0}})


def test_teacher_states_computed_once_give_the_same_comparisons(space, teacher_net, tiny_teacher, rows):
    """The export compares every candidate with the teacher on the same batches: the teacher runs once per batch,
    and every cosine and loss is the one computed against the teacher itself."""
    from nasbert.training.evaluation import TeacherStates, plain_batches, state_cosine, whole_model_loss

    batches = plain_batches(rows, batch_size=8, n_batches=3)
    calls = []
    hook = tiny_teacher.register_forward_hook(lambda *_: calls.append(1))
    try:
        states = TeacherStates(tiny_teacher)
        for arch in (PRUNED, space.layer_dropped(2)):
            model = _extract(teacher_net, arch)
            assert state_cosine(model, states, None, batches) == state_cosine(model, tiny_teacher, None, batches)
            assert whole_model_loss(model, states, None, batches) == \
                whole_model_loss(model, tiny_teacher, None, batches)
    finally:
        hook.remove()
    assert len(calls) == 3 + 2 * 2 * 3  # once per batch for the states; each direct comparison runs it per batch


def test_teacher_states_copied_to_another_process_hold_the_states_not_the_teacher(space, teacher_net, tiny_teacher,
                                                                                   rows):
    """A Ray worker gets a pickled copy of the search objective: its teacher states travel without the teacher (a
    Hugging Face model that has returned its hidden states cannot be pickled), are found again for the copied
    batches, and compare as the original does; a batch the states were not made with is a clear error."""
    import pickle

    from nasbert.training.evaluation import TeacherStates, plain_batches, state_cosine

    batches = plain_batches(rows, batch_size=8, n_batches=2)
    states = TeacherStates(tiny_teacher, batches)
    model = _extract(teacher_net, PRUNED)
    copied_states, copied_batches = pickle.loads(pickle.dumps((states, batches)))
    assert copied_states.teacher is None
    assert state_cosine(model, copied_states, None, copied_batches) == state_cosine(model, states, None, batches)
    with pytest.raises(ValueError, match="copied without the teacher"):
        state_cosine(model, copied_states, None, plain_batches(rows[16:], batch_size=8, n_batches=1))
