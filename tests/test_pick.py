"""family.json (schema, validation), model cards, and ``nasbert pick``: by latency, speed-up and size, the
no-fit message, exit codes, and re-measuring on this machine."""

from __future__ import annotations

import json
from dataclasses import replace as dataclass_replace

import pytest

from nasbert import Arch, SearchSpace, SuperNet
from nasbert.export.card import write_model_card
from nasbert.export.family import Family, FamilyError, FamilyMember
from nasbert.cli.pick import pick_main
from nasbert.export.pick import NoFit, measure_family, parse_params, pick

ARCH = Arch.parse("16:mha,ffn,identity,identity|16:sepconv3,ffn,identity,identity")
DEVICE = {"key": "test-cpu-onnxruntime-t1-b1-s16", "engine": "onnxruntime", "threads": 1, "batch": 1, "seq_len": 16}


def member(name: str, latency_ms: float, *, valid_loss: float | None = 1.0, proxy_loss: float | None = 2.0,
           params: int = 1_000_000, teacher_ms: float = 10.0, onnx: str | None = None) -> FamilyMember:
    return FamilyMember(
        name=name, path=f"members/{name}", arch=ARCH.to_dict(), params=params, flops=3 * params,
        latency_ms=latency_ms, predicted_latency_ms=latency_ms * 1.1, speedup=teacher_ms / latency_ms,
        proxy_loss=proxy_loss, valid_loss=valid_loss, budget=f"{teacher_ms / latency_ms:.0f}x", onnx=onnx,
    )


def make_family(root, members, *, teacher_ms: float = 10.0, device=DEVICE) -> Family:
    for m in members:
        (root / m.path).mkdir(parents=True, exist_ok=True)
    family = Family(teacher="tiny-teacher", device=dict(device), teacher_latency_ms=teacher_ms, models=list(members))
    family.save(root)
    return family


@pytest.fixture
def family_dir(tmp_path):
    make_family(tmp_path, [
        member("fast", 2.0, valid_loss=3.0, params=500_000),
        member("mid", 5.0, valid_loss=2.0, params=2_000_000),
        member("slow", 9.0, valid_loss=1.0, params=8_000_000),
    ])
    return tmp_path


# ---------------------------------------------------------------------------------------------------- schema


def test_family_round_trips_and_keeps_extra_keys(tmp_path):
    m = dataclass_replace(member("a", 2.5, valid_loss=None), extra={"notes": "kept"})
    (tmp_path / "members/b").mkdir(parents=True)
    (tmp_path / "members/b/model.onnx").write_bytes(b"onnx")
    family = make_family(tmp_path, [m, member("b", 4.0, onnx="members/b/model.onnx")])
    data = json.loads((tmp_path / "family.json").read_text())
    assert set(data) >= {"teacher", "device", "teacher_latency_ms", "models", "created", "nasbert_version"}
    assert set(data["models"][0]) >= {"name", "path", "arch", "params", "flops", "latency_ms",
                                      "predicted_latency_ms", "speedup", "proxy_loss", "valid_loss", "budget", "onnx"}
    assert data["models"][0]["notes"] == "kept" and data["models"][0]["valid_loss"] is None
    loaded = Family.load(tmp_path)
    assert loaded == family
    assert loaded.models[0].extra == {"notes": "kept"}
    assert Family.load(tmp_path / "family.json") == family
    assert loaded.member_dir(loaded.models[1]) == (tmp_path / "members/b").resolve()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _write(tmp_path, data) -> None:
    (tmp_path / "family.json").write_text(json.dumps(data))


def test_validation_errors_name_the_file_and_key(family_dir):
    good = json.loads((family_dir / "family.json").read_text())

    def error(mutate) -> str:
        data = json.loads(json.dumps(good))
        mutate(data)
        _write(family_dir, data)
        with pytest.raises(FamilyError) as e:
            Family.load(family_dir)
        assert str(family_dir / "family.json") in str(e.value)
        return str(e.value)

    assert "missing required key 'models[1].latency_ms'" in error(lambda d: d["models"][1].pop("latency_ms"))
    assert "missing required key 'device.seq_len'" in error(lambda d: d["device"].pop("seq_len"))
    assert "missing required key 'teacher_latency_ms'" in error(lambda d: d.pop("teacher_latency_ms"))
    assert "'device.threads' must be an integer" in error(lambda d: d["device"].update(threads="1"))
    assert "'models[0].params' must be an integer" in error(lambda d: d["models"][0].update(params=1.5))
    assert "'models[2].valid_loss' must be a number or null" in error(
        lambda d: d["models"][2].update(valid_loss="low"))
    assert "'models[0].arch'" in error(lambda d: d["models"][0].update(arch={"blocks": "16:mha"}))
    assert "used twice" in error(lambda d: d["models"][1].update(name="fast"))
    message = error(lambda d: d["models"][1].update(path="members/gone"))
    assert "'models[1].path'" in message and "members/gone" in message and "does not exist" in message
    assert "'models[0].onnx'" in error(lambda d: d["models"][0].update(onnx="members/fast/model.onnx"))

    (family_dir / "family.json").write_text("{not json")
    with pytest.raises(FamilyError, match="not valid JSON"):
        Family.load(family_dir)
    with pytest.raises(FamilyError, match="not found"):
        Family.load(family_dir / "nowhere")


def test_save_refuses_a_member_whose_directory_is_missing(tmp_path):
    family = Family(teacher="t", device=DEVICE, teacher_latency_ms=10.0, models=[member("a", 2.0)])
    with pytest.raises(FamilyError, match="members/a"):
        family.save(tmp_path)
    assert not (tmp_path / "family.json").exists()


# ---------------------------------------------------------------------------------------------------- pick


def test_pick_by_each_budget_takes_the_lowest_loss_that_fits(family_dir):
    assert pick(family_dir, latency_ms=100).name == "slow"
    assert pick(family_dir, latency_ms=6).name == "mid"
    assert pick(family_dir, latency_ms=5.0).name == "mid"  # the bound is inclusive
    assert pick(family_dir, latency_ms=4.9).name == "fast"
    assert pick(family_dir, speedup=1.0).name == "slow"
    assert pick(family_dir, speedup=2.0).name == "mid"  # 10 ms / 2 = 5 ms
    assert pick(family_dir, speedup=2.01).name == "fast"
    assert pick(family_dir, speedup=5).name == "fast"
    assert pick(family_dir, max_params="2M").name == "mid"
    assert pick(family_dir, max_params=1_999_999).name == "fast"
    assert pick(Family.load(family_dir), max_params="8M").name == "slow"


def test_ties_go_to_the_faster_member_and_null_valid_loss_falls_back_to_proxy(tmp_path):
    make_family(tmp_path, [
        member("slow-tie", 6.0, valid_loss=1.0),
        member("fast-tie", 3.0, valid_loss=1.0),
        member("proxy-only", 4.0, valid_loss=None, proxy_loss=0.5),
        member("worse", 1.0, valid_loss=1.5),
    ])
    assert pick(tmp_path, latency_ms=10).name == "proxy-only"
    assert pick(tmp_path, latency_ms=3.9).name == "fast-tie"
    family = Family.load(tmp_path)
    family.models[2] = dataclass_replace(family.models[2], proxy_loss=1.2)
    assert pick(family, latency_ms=10).name == "fast-tie"


def test_no_fit_names_the_tightest_budget_that_can_be_met(tmp_path):
    make_family(tmp_path, [member("x", 4.3, teacher_ms=17.9), member("y", 8.0, teacher_ms=17.9, params=3_000_000)],
                teacher_ms=17.9)
    with pytest.raises(NoFit) as e:
        pick(tmp_path, speedup=30)
    message = str(e.value)
    assert "30" in message and "'x'" in message and "4.16x" in message and "ask for at most 4.16x" in message
    assert pick(tmp_path, speedup=4.16).name == "x"  # the suggestion fits

    with pytest.raises(NoFit, match=r"no model fits 1\.0 ms.*'x'.*ask for at least 4\.3 ms"):
        pick(tmp_path, latency_ms=1.0)
    with pytest.raises(NoFit, match=r"no model fits 10,000 .*'x'.*ask for at least 1000000"):
        pick(tmp_path, max_params="10k")
    assert isinstance(e.value, ValueError)


def test_pick_needs_exactly_one_positive_budget(family_dir):
    with pytest.raises(ValueError, match="exactly one"):
        pick(family_dir)
    with pytest.raises(ValueError, match="exactly one.*latency_ms, speedup"):
        pick(family_dir, latency_ms=3, speedup=2)
    with pytest.raises(ValueError, match="positive"):
        pick(family_dir, speedup=-1)


def test_parse_params():
    assert parse_params("10M") == 10_000_000
    assert parse_params("500k") == 500_000
    assert parse_params("1.5M") == 1_500_000
    assert parse_params("12000000") == 12_000_000
    assert parse_params(" 2b ") == 2_000_000_000
    assert parse_params(7) == 7
    for bad in ("ten", "10MB", "", "-1M", "0", "1e6"):
        with pytest.raises(ValueError, match="parameter count"):
            parse_params(bad)


# ---------------------------------------------------------------------------------------------------- CLI


def test_pick_main_prints_the_absolute_path_and_the_numbers(family_dir, capsys):
    assert pick_main([str(family_dir), "--speedup", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str((family_dir / "members/mid").resolve())
    text = "\n".join(out)
    assert "5.000 ms" in text and "2,000,000" in text and "2.0000" in text and "2.00x" in text
    assert f"nasbert finetune {out[0]} --task TASK" in text  # what to do with it next


def test_pick_main_json_has_the_member_keys(family_dir, capsys):
    assert pick_main([str(family_dir / "family.json"), "--max-params", "600k", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = Family.load(family_dir).member("fast").to_dict()
    assert set(expected) <= set(report)
    assert report["path"] == str((family_dir / "members/fast").resolve())
    assert {k: report[k] for k in expected if k != "path"} == {k: v for k, v in expected.items() if k != "path"}
    assert report["measured"] is False and report["teacher_latency_ms"] == 10.0 and report["device"] == DEVICE


def test_pick_main_exit_codes(family_dir, tmp_path, capsys):
    assert pick_main([str(family_dir), "--latency-ms", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "no model fits 0.5 ms" in err and "ask for at least 2.0 ms" in err

    assert pick_main([str(tmp_path / "missing"), "--speedup", "2"]) == 1
    assert "not found" in capsys.readouterr().err
    assert pick_main([str(family_dir)]) == 1
    assert "exactly one budget" in capsys.readouterr().err
    assert pick_main([str(family_dir), "--speedup", "2", "--max-params", "1M"]) == 1
    assert "--speedup, --max-params" in capsys.readouterr().err
    assert pick_main([str(family_dir), "--max-params", "lots"]) == 1
    assert "parameter count 'lots'" in capsys.readouterr().err
    (family_dir / "family.json").write_text("[")
    assert pick_main([str(family_dir), "--speedup", "2"]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    assert pick_main([str(family_dir), "--speedup", "fast"]) == 2  # argparse's usage error
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------------- measure


@pytest.fixture(scope="module")
def onnx_family(tmp_path_factory):
    """Two real tiny members with ONNX files and a teacher.onnx (the largest architecture stands in for it)."""
    from nasbert.onnxio import export_onnx

    root = tmp_path_factory.mktemp("onnx-family")
    space = SearchSpace.load("tiny")
    net = SuperNet(space).eval()
    archs = {"small": Arch.parse("16:sepconv3,identity,identity,identity|16:ffn,identity,identity,identity"),
             "big": Arch.parse("24:mha,ffn,mha,ffn|24:mha,ffn,sepconv5,identity")}
    members = []
    for name, arch in archs.items():
        d = root / "members" / name
        net.extract(arch).save_pretrained(d)
        export_onnx(net.extract(arch), d / "model.onnx")
        members.append(dataclass_replace(
            member(name, 111.0 if name == "small" else 222.0, params=space.num_params(arch)),
            arch=arch.to_dict(), flops=space.flops(arch, 16), onnx=f"members/{name}/model.onnx"))
    export_onnx(net.extract(space.largest_arch()), root / "teacher.onnx")
    make_family(root, members, teacher_ms=999.0)
    return root


def test_measure_repicks_on_fresh_numbers_without_touching_the_file(onnx_family, capsys):
    before = (onnx_family / "family.json").read_text()
    chosen = pick(onnx_family, latency_ms=1e6, measure=True, threads=1)
    assert chosen.name == "big" or chosen.name == "small"
    assert 0 < chosen.latency_ms and chosen.latency_ms not in (111.0, 222.0)
    assert chosen.speedup != pytest.approx(999.0 / chosen.latency_ms)  # the teacher was measured again too
    assert (onnx_family / "family.json").read_text() == before

    assert pick_main([str(onnx_family), "--speedup", "1e-9", "--measure", "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["measured"] is True and 0 < report["latency_ms"] not in (111.0, 222.0)
    assert 0 < report["teacher_latency_ms"] != 999.0
    assert report["speedup"] == pytest.approx(report["teacher_latency_ms"] / report["latency_ms"])
    assert report["device"]["threads"] == 1 and report["device"]["engine"] == "onnxruntime"
    assert (onnx_family / "family.json").read_text() == before


def test_measure_keeps_the_recorded_teacher_latency_without_teacher_onnx(onnx_family, tmp_path):
    import shutil

    copy = tmp_path / "family"
    shutil.copytree(onnx_family, copy, ignore=shutil.ignore_patterns("teacher.onnx"))
    chosen = pick(copy, max_params="100M", measure=True)
    assert chosen.latency_ms > 0 and chosen.latency_ms not in (111.0, 222.0)
    assert chosen.speedup == pytest.approx(999.0 / chosen.latency_ms)


def test_measure_judges_a_cut_timed_faster_than_its_work_at_its_work(onnx_family, tmp_path, caplog):
    import shutil

    copy = tmp_path / "family"
    shutil.copytree(onnx_family, copy)
    raw = json.loads((copy / "family.json").read_text())
    for m in raw["models"]:  # the small member as a cut whose work allows only 1.01x over the (larger) teacher
        if m["name"] == "small":
            m["work_speedup"] = 1.01
    (copy / "family.json").write_text(json.dumps(raw))
    with caplog.at_level("WARNING", logger="nasbert.export.pick"):
        family = measure_family(Family.load(copy), threads=1)
    small, big = sorted(family.models, key=lambda m: m.name != "small")
    assert small.speedup == pytest.approx(1.01) and small.extra["timed_speedup"] > 1.01
    assert small.latency_ms == pytest.approx(family.teacher_latency_ms / 1.01)
    assert big.speedup == pytest.approx(family.teacher_latency_ms / big.latency_ms)
    assert "small timed at" in caplog.text and "faster than its work allows (1.01x)" in caplog.text
    assert "timed_speedup" not in big.extra and "big timed" not in caplog.text


@pytest.mark.parametrize("speedups, picked", [((4.2, 4.05), "big"), ((4.39, 3.994, 4.1), "big"),
                                              ((4.1, 3.95, 3.9), "small"), ((5.0,), "big")])
def test_measure_times_a_member_near_the_budget_again_as_the_export_does(onnx_family, tmp_path, monkeypatch,
                                                                         capsys, speedups, picked):
    """``pick --measure --speedup 4``: the better member "big" timed at the given speed-ups (runs of the same
    model), "small" always at 10x. Near the budget a longer run decides; where the two disagree, a third run's
    median does; far from it (5x) one run does."""
    import shutil

    import nasbert.latency.models as lm
    from nasbert.export.pick import _TEACHER_KEY
    from nasbert.latency.measure import summarize

    copy = tmp_path / "family"
    shutil.copytree(onnx_family, copy)
    raw = json.loads((copy / "family.json").read_text())
    for m in raw["models"]:
        m["valid_loss"] = 0.5 if m["name"] == "big" else 1.0  # big ranks first where it fits
    (copy / "family.json").write_text(json.dumps(raw))
    calls, real = [], lm.measure_interleaved

    def scripted(engines, **kw):
        timings = real(engines, **kw)
        teacher_ms = timings[_TEACHER_KEY].median_ms
        for name, x in (("big", speedups[len(calls)]), ("small", 10.0)):
            if name in timings:
                timings[name] = summarize([teacher_ms / x])
        calls.append(sorted(engines))
        return timings

    monkeypatch.setattr(lm, "measure_interleaved", scripted)
    assert pick_main([str(copy), "--speedup", "4", "--measure", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(copy / "members" / picked)
    assert len(calls) == len(speedups) and all(c == sorted([_TEACHER_KEY, "big"]) for c in calls[1:])
    calls.clear()
    family = measure_family(Family.load(copy), threads=1, limits=lambda t: [t / 4.0])
    big = next(m for m in family.models if m.name == "big")
    decided = sorted(speedups)[1] if len(speedups) == 3 else speedups[-1]
    assert big.speedup == pytest.approx(decided)
    if len(speedups) == 1:
        assert "first_speedup" not in big.extra and "edge " not in out
    else:
        assert big.extra["first_speedup"] == pytest.approx(speedups[0])
        assert (big.extra.get("edge_runs") == pytest.approx(list(speedups))) if len(speedups) == 3 \
            else "edge_runs" not in big.extra
        if picked == "big":
            assert f"timed {speedups[0]:.2f}x first, near the budget's edge" in out
            assert ("the median decides" in out) == (len(speedups) == 3)


def test_measure_without_onnx_is_a_clear_error(family_dir):
    with pytest.raises(FamilyError, match="no ONNX model to measure"):
        pick(family_dir, speedup=1, measure=True)


# ---------------------------------------------------------------------------------------------------- card


def test_model_card_holds_front_matter_and_the_members_exact_numbers(onnx_family, tmp_path):
    family = Family.load(onnx_family)
    m = dataclass_replace(family.member("big"), latency_ms=3.14159, predicted_latency_ms=2.71828, speedup=4.56789,
                          proxy_loss=0.123456, valid_loss=0.654321, budget="12ms")
    path = write_model_card(m, family, tmp_path / "card", space_summary="search space 'tiny'")
    text = path.read_text()
    assert path.name == "README.md"
    front = text.split("---")[1]
    for line in ("library_name: transformers", "pipeline_tag: feature-extraction", "- nasbert", "- bert",
                 "- distillation", "- neural-architecture-search"):
        assert line in front
    assert text.startswith("---\n")
    for number in (f"{m.params:,}", f"{m.flops:,}", "3.142 ms", "2.718 ms", "999.000 ms", "4.57x", "0.1235",
                   "0.6543", "12ms", DEVICE["key"], "sequence length 16", "1 thread,"):
        assert number in text, number
    for exact in ("3.14159", "2.71828", "4.56789", "0.123456", "0.654321", str(m.params), str(m.flops)):
        assert exact in text, exact  # the family.json entry, verbatim
    assert "| 0 | 24 | mha, ffn, mha, ffn |" in text and "| 1 | 24 | mha, ffn, sepconv5, identity |" in text
    assert "trust_remote_code=True" in text and "import nasbert" in text
    assert "onnxruntime" in text and "model.onnx" in text and "search space 'tiny'" in text

    # the fine-tuning commands it gives are ones the command line takes
    import shlex

    from nasbert.cli import build_parser

    commands = [line.split("#")[0] for line in text.splitlines() if line.startswith("nasbert finetune ")]
    assert len(commands) == 2
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert args.model.endswith("big") and args.lr is None  # the default: the rate grid for nasbert models
    assert args.pair_encoding == ["cross", "bi"]

    no_onnx = write_model_card(dataclass_replace(m, onnx=None, valid_loss=None), family, tmp_path / "plain")
    plain = no_onnx.read_text()
    assert "InferenceSession" not in plain and "| validation loss | n/a |" in plain


def test_pick_ranks_on_the_cosine_where_members_have_one(tmp_path):
    """The export's ranking: the member closest to the teacher wins over one with a lower loss."""
    make_family(tmp_path, [
        dataclass_replace(member("close", 4.0, valid_loss=3.0), cosine=0.40, source="teacher"),
        dataclass_replace(member("low-loss", 5.0, valid_loss=1.0), cosine=0.30),
        dataclass_replace(member("fastest", 1.0, valid_loss=0.5), cosine=0.20),
    ])
    assert pick(tmp_path, latency_ms=6.0).name == "close"
    assert pick(tmp_path, latency_ms=3.0).name == "fastest"
    loaded = Family.load(tmp_path)
    assert [(m.source, m.cosine) for m in loaded.models] == [("teacher", 0.40), ("supernet", 0.30),
                                                             ("supernet", 0.20)]


def test_pick_ranks_by_cosine_then_loss_and_ignores_an_old_cut_size(tmp_path):
    """Best first as the export ranks: the highest cosine, then (at equal cosine) the lowest loss, then the faster
    member; a member without a cosine comes after those with one. An older family's ``cut_size`` no longer ranks."""
    make_family(tmp_path, [
        dataclass_replace(member("close", 3.0, valid_loss=2.0), cosine=0.40),
        dataclass_replace(member("close-low-loss", 3.5, valid_loss=1.0), cosine=0.40),
        dataclass_replace(member("old-cut", 2.5, valid_loss=0.5), cosine=0.29, source="teacher",
                          extra={"cut": "teacher-L1+mha1", "cut_size": 3.0}),
        dataclass_replace(member("no-cosine", 2.0, valid_loss=0.1)),
        dataclass_replace(member("close-twin", 1.5, valid_loss=2.0), cosine=0.40),
    ])
    assert pick(tmp_path, latency_ms=4.0).name == "close-low-loss"  # equal cosine: the lower loss
    assert pick(tmp_path, latency_ms=3.2).name == "close-twin"  # equal cosine and loss: the faster
    family = Family.load(tmp_path)
    family.models.pop(4)  # without the twin, the 0.29 cut beats a lower loss without a cosine
    assert pick(family, latency_ms=2.6).name == "old-cut"
    assert pick(family, latency_ms=2.2).name == "no-cosine"
    assert Family.load(tmp_path).models[2].extra == {"cut": "teacher-L1+mha1", "cut_size": 3.0}  # kept as written


def test_pick_ranks_by_the_probe_before_the_cosine(tmp_path):
    """A member the probe scored higher wins over one closer to the teacher; members without a probe score come
    after those with one, and among those the cosine ranks."""
    make_family(tmp_path, [
        dataclass_replace(member("close", 3.0), cosine=0.60, extra={"probe": 61.0}),
        dataclass_replace(member("reads-pairs", 2.8), cosine=0.35, extra={"probe": 74.0}),
        dataclass_replace(member("unprobed", 2.5), cosine=0.90),
        dataclass_replace(member("unprobed-far", 2.0), cosine=0.10),
    ])
    assert pick(tmp_path, latency_ms=3.5).name == "reads-pairs"
    assert pick(tmp_path, latency_ms=2.9).name == "reads-pairs"
    assert pick(tmp_path, latency_ms=2.6).name == "unprobed"


def _int8_family(tmp_path):
    big = dataclasses_replace_int8(member("big", 6.0, valid_loss=1.0), 2.5, "members/big/model.int8.onnx")
    small = member("small", 3.0, valid_loss=2.0)
    return make_family(tmp_path, [big, small])


def dataclasses_replace_int8(m: FamilyMember, int8_ms: float, path: str) -> FamilyMember:
    return dataclass_replace(m, int8_onnx=path, int8_latency_ms=int8_ms, int8_speedup=10.0 / int8_ms, int8_error=0.1)


def test_pick_chooses_across_precisions(tmp_path, capsys):
    _int8_family(tmp_path)
    # fp32 only: the small member; any: the big member's int8 graph fits and the big member ranks first
    assert pick(tmp_path, latency_ms=4.0).name == "small"
    chosen = pick(tmp_path, latency_ms=4.0, precision="any")
    assert (chosen.name, chosen.extra["precision"], chosen.latency_ms) == ("big", "int8", 2.5)
    assert chosen.onnx == "members/big/model.int8.onnx"
    # its fp32 graph before its int8 one where both fit
    assert pick(tmp_path, latency_ms=7.0, precision="any").extra["precision"] == "fp32"
    assert pick(tmp_path, speedup=3.5, precision="any").extra["precision"] == "int8"  # 10 / 2.5 = 4x
    with pytest.raises(NoFit, match="2.5"):
        pick(tmp_path, latency_ms=2.0, precision="int8")
    assert pick_main([str(tmp_path), "--latency-ms", "4", "--precision", "any", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "int8" and out["onnx"].endswith("members/big/model.int8.onnx")


def test_pick_int8_refuses_a_family_without_int8_graphs(family_dir, capsys):
    with pytest.raises(FamilyError, match="no timed int8 graph.*export.int8: true"):
        pick(family_dir, latency_ms=9.0, precision="int8")
    assert pick_main([str(family_dir), "--latency-ms", "9", "--precision", "int8"]) == 1
    assert "no timed int8 graph" in capsys.readouterr().err
    with pytest.raises(ValueError, match="precision must be one of fp32, int8, any"):
        pick(family_dir, latency_ms=9.0, precision="fp16")
