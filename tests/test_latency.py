"""Latency: statistics, engines and threads, ONNX parity, table sums, predictor round trip. No timing asserts."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from nasbert import Arch, SearchSpace, SuperNet
from nasbert.config import ConfigError
from nasbert.space import SpaceError
from nasbert.onnxio import OnnxParityError, export_onnx, onnx_parity
from nasbert.latency import (
    LatencyConfig, LatencyPredictor, LatencyTable, OnnxRuntimeEngine, TorchEngine, accuracy, arch_entries,
    build_table, features, kendall_tau, measure_interleaved, profile_device, summarize,
)
from nasbert.latency.measure import device_info
from nasbert.latency.predictor import FEATURE_NAMES
from nasbert.latency.profile import LatencyProfile
from nasbert.latency.table import table_keys


def test_summary_statistics_are_computed_right():
    t = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert t.median_ms == 3.0 and t.n == 5
    assert t.iqr_ms == pytest.approx(2.0)  # q1 = 2, q3 = 4
    assert t.n_outliers == 1 and t.mean_ms == pytest.approx(2.5)  # 100 is beyond q3 + 1.5 IQR = 7
    assert t.p10_ms == pytest.approx(1.4) and t.p90_ms == pytest.approx(61.6)
    with pytest.raises(ValueError):
        summarize([])


def test_interleaved_measurement_counts_and_orders_calls():
    """A fake clock makes each call of candidate k last exactly k ms; calls are interleaved across rounds."""
    now = [0.0]
    calls = []

    def make(name, ms):
        def run():
            calls.append(name)
            now[0] += ms / 1000.0
        return run

    result = measure_interleaved({"a": make("a", 1.0), "b": make("b", 2.0), "c": make("c", 3.0)}, warmup=2,
                                 repeats=6, rounds=3, seed=0, clock=lambda: now[0])
    assert {k: v.median_ms for k, v in result.items()} == pytest.approx({"a": 1.0, "b": 2.0, "c": 3.0})
    assert all(v.n == 6 and v.iqr_ms == pytest.approx(0.0) for v in result.values())
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up first
    timed = calls[6:]
    assert len(timed) == 18 and all(timed.count(k) == 6 for k in "abc")
    # Round-robin: each round times every candidate twice in a row, so no candidate gets all its runs at once.
    blocks = [timed[i : i + 2] for i in range(0, 18, 2)]
    assert all(len(set(b)) == 1 for b in blocks)
    assert all(sorted(b[0] for b in blocks[r : r + 3]) == ["a", "b", "c"] for r in (0, 3, 6))


def test_kendall_tau_and_accuracy():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    report = accuracy([11.0, 18.0, 30.0], [10.0, 20.0, 30.0])
    assert report["mape"] == pytest.approx((0.1 + 0.1 + 0.0) / 3)
    assert report["max_err"] == pytest.approx(0.1) and report["kendall_tau"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def supernet(tiny_space):
    return SuperNet(tiny_space, seed=0).eval()


def test_onnx_export_matches_pytorch(supernet, tiny_space, tmp_path):
    rng = np.random.default_rng(0)
    pruned = Arch.parse("32:mha,ffn,mha,ffn96|24:ffn40,identity,identity,identity")  # pruned FFNs too
    for i, arch in enumerate([tiny_space.sample(rng) for _ in range(4)] + [pruned]):
        model = supernet.extract(arch)
        report = export_onnx(model, tmp_path / f"m{i}.onnx")
        assert report["max_abs_diff"] <= 1e-4
        assert onnx_parity(model, tmp_path / f"m{i}.onnx", batch=3, seq_len=21) <= 1e-4  # other shapes too
        assert not model.training


def test_onnx_parity_failure_removes_the_file(supernet, tiny_space, tmp_path, monkeypatch):
    import nasbert.onnxio as onnx_module

    model = supernet.extract(tiny_space.largest_arch())
    monkeypatch.setattr(onnx_module, "onnx_parity", lambda *a, **k: 0.5)
    with pytest.raises(OnnxParityError, match="differs from PyTorch"):
        export_onnx(model, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_engines_run_the_model_and_honour_threads(supernet, tiny_space, tmp_path):
    model = supernet.extract(tiny_space.largest_arch())
    feeds = {"input_ids": torch.randint(1, 99, (1, 12)), "attention_mask": torch.ones(1, 12, dtype=torch.long),
             "token_type_ids": torch.zeros(1, 12, dtype=torch.long)}
    export_onnx(model, tmp_path / "m.onnx")
    ort_engine = OnnxRuntimeEngine(tmp_path / "m.onnx", {k: v.numpy() for k, v in feeds.items()}, threads=1)
    assert ort_engine.session.get_session_options().intra_op_num_threads == 1
    torch_engine = TorchEngine(model, feeds, threads=1)
    seen = []
    torch_engine.module.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = torch_engine()
        assert seen == [1] and torch.get_num_threads() == 2  # runs on its threads, gives the caller's back
    finally:
        torch.set_num_threads(previous)
    np.testing.assert_allclose(ort_engine()[0], out.last_hidden_state.numpy(), atol=1e-4)


def test_torch_engine_leaves_the_callers_module_as_it_was(supernet, tiny_space):
    model = supernet.extract(tiny_space.largest_arch()).train()
    weight = next(model.parameters())
    engine = TorchEngine(model, {"input_ids": torch.ones(1, 4, dtype=torch.long)}, device="meta")
    assert next(model.parameters()) is weight and weight.device.type == "cpu" and model.training
    assert next(engine.module.parameters()).device.type == "meta" and not engine.module.training


def test_onnx_runtime_on_cuda_without_the_cuda_provider_is_an_error(supernet, tiny_space, tmp_path, monkeypatch):
    import onnxruntime as ort

    export_onnx(supernet.extract(tiny_space.largest_arch()), tmp_path / "m.onnx")
    # An onnxruntime that lists the CUDA provider but cannot start it (no GPU, or no CUDA libraries) runs the
    # session on the CPU provider alone.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider is not active.*CPUExecutionProvider"):
        OnnxRuntimeEngine(tmp_path / "m.onnx", {"input_ids": np.ones((1, 4), np.int64)}, device="cuda")


def test_table_sum_is_the_sum_of_its_parts(tiny_space):
    entries = {key: float(i + 1) for i, key in enumerate(table_keys(tiny_space))}
    table = LatencyTable(entries)
    arch = Arch.parse("16:mha,mha,sepconv3,identity|24:ffn,identity,identity,identity")
    assert arch_entries(arch) == ["embeddings@16", "mha@16", "mha@16", "sepconv3@16", "ffn@24", "adapter@16->24",
                                  "output@24"]
    expected = sum(entries[k] for k in arch_entries(arch))
    assert table.predict(arch) == pytest.approx(expected)
    assert sum(table.parts(arch).values()) == pytest.approx(expected)
    assert table.parts(arch)["mha@16"] == pytest.approx(2 * entries["mha@16"])
    with pytest.raises(KeyError, match="no entry"):
        LatencyTable({}).predict(arch)
    # an elastic space's pruned attentions and FFNs have their own entries, counted with the attentions and FFNs
    elastic = SearchSpace.elastic_for(tiny_space.teacher, name="tiny_elastic")
    entries = {key: float(i + 1) for i, key in enumerate(table_keys(elastic))}
    table = LatencyTable(entries)
    pruned = Arch.parse("32:mha2,ffn64|32:identity,identity|32:mha,identity|32:identity,identity")
    assert arch_entries(pruned) == ["embeddings@32", "mha2@32", "ffn64@32", "mha@32", "adapter@32->32", "output@32"]
    assert table.predict(pruned) == pytest.approx(sum(entries[k] for k in arch_entries(pruned)))
    f = features(pruned, table)
    assert f[FEATURE_NAMES.index("table_ffn_ms")] == entries["ffn64@32"]
    assert f[FEATURE_NAMES.index("table_mha_ms")] == entries["mha2@32"] + entries["mha@32"]
    with pytest.raises(KeyError, match="built for another space"):
        LatencyTable({k: v for k, v in entries.items() if k != "ffn64@32"}).predict(pruned)


def test_table_is_measured_for_every_entry(tiny_space):
    table, timings = build_table(tiny_space, seq_len=8, warmup=1, repeats=2, rounds=1)
    assert set(table.entries) == set(table_keys(tiny_space)) == set(timings)
    assert len(table.entries) == 3 + 5 * 3 + 9 + 3  # embeddings, 5 ops, adapters, outputs at 3 widths
    assert all(v > 0 for v in table.entries.values())


def test_elastic_table_has_every_head_and_neuron_count(tiny_space):
    elastic = SearchSpace.elastic_for(tiny_space.teacher, name="tiny_elastic")
    keys = table_keys(elastic)
    assert keys == (["embeddings@32", "mha1@32", "mha2@32", "mha3@32", "mha@32"]
                    + [f"ffn{16 * q}@32" for q in range(1, 8)] + ["ffn@32", "adapter@32->32", "output@32"])
    table, _ = build_table(elastic, seq_len=8, warmup=1, repeats=2, rounds=1)
    assert set(table.entries) == set(keys) and all(v > 0 for v in table.entries.values())


def _synthetic(tiny_space):
    """A table and 'measured' latencies that follow a known linear law of the features."""
    rng = np.random.default_rng(3)
    table = LatencyTable({key: float(rng.uniform(0.1, 2.0)) for key in table_keys(tiny_space)})
    archs = [tiny_space.sample(rng) for _ in range(40)]
    truth = np.array([1.5, 1.2, 0.8, 1.0, 0.05, 0.2])
    measured = [float(features(a, table) @ truth + 0.3) for a in archs]
    return table, archs, measured


def test_an_elastic_profile_times_teacher_cuts_across_their_sizes(tiny_space):
    """A quarter of an elastic space's profiled models are teacher cuts, from the smallest to the largest by FLOPs
    (the search's starting points, which the per-block sampler seldom draws); the rest are the sampler's, the
    largest and the smallest first, every model once. A space of paths is profiled on the sampler's alone."""
    from nasbert.latency.profile import profile_archs, sample_archs

    elastic = SearchSpace.elastic_for(tiny_space.teacher, name="tiny_elastic")
    archs = profile_archs(elastic, 20, np.random.default_rng(0), seq_len=16)
    cuts = elastic.teacher_cuts()
    assert len(archs) == len(set(archs)) == 20 and all(elastic.contains(a) for a in archs)
    picked = [a for a in archs if a in cuts]
    assert len(picked) == 5
    flops = sorted(elastic.flops(a, 16, adapters=False) for a in cuts)
    assert {elastic.flops(a, 16, adapters=False) for a in picked} >= {flops[0], flops[-1]}
    assert archs[:2] == sample_archs(elastic, 2, np.random.default_rng(0))
    assert profile_archs(tiny_space, 12, np.random.default_rng(1)) == sample_archs(tiny_space, 12,
                                                                                   np.random.default_rng(1))


def test_teacher_cuts_are_the_bottom_layers_at_every_ffn_size_each_once(tiny_space):
    elastic = SearchSpace.elastic_for(tiny_space.teacher, name="tiny_elastic")
    cuts = elastic.teacher_cuts()
    layers, ffns = elastic.num_blocks, len(elastic._elastic_ops("ffn"))
    assert cuts[: layers - 1] == [elastic.layer_dropped(k) for k in range(1, layers)]
    whole = (layers - 1) * ffns * 2 + ffns - 1  # every FFN size, with/without the next attention
    # thinned: a third, a half and two thirds of 4 heads are 1, 2 and 3 heads; the FFN skipped or at 16 or 32
    assert len(cuts) == len(set(cuts)) == whole + layers * 3 * 3
    assert elastic.teacher_arch() not in cuts
    for arch in cuts:
        kept = [b for b in arch.blocks if b.layers]
        assert arch.blocks[: len(kept)] == tuple(kept)  # the bottom layers, then nothing
    for arch in cuts[whole:]:  # every kept layer alike: one of the thinned attentions, a small FFN or none
        kept = {b.ops for b in arch.blocks if b.layers}
        assert len(kept) == 1 and next(iter(kept)) in {(f"mha{h}", f) for h in (1, 2, 3)
                                                         for f in ("identity", "ffn16", "ffn32")}
    with pytest.raises(SpaceError, match="elastic"):
        tiny_space.teacher_cuts()


def test_predictor_learns_a_correction_and_round_trips(tiny_space, tmp_path):
    table, archs, measured = _synthetic(tiny_space)
    predictor = LatencyPredictor.fit(table, archs[:30], measured[:30], ridge=1e-9, teacher_latency_ms=12.5)
    held = accuracy(predictor.predict_many(archs[30:]), measured[30:])
    assert held["mape"] < 1e-6 and held["kendall_tau"] == pytest.approx(1.0)
    assert accuracy([table.predict(a) for a in archs[30:]], measured[30:])["mape"] > 0.05  # the table alone is off
    predictor.save(tmp_path)
    loaded = LatencyPredictor.load(tmp_path)
    assert loaded.teacher_latency_ms == 12.5
    for arch in archs:
        assert loaded.predict(arch) == predictor.predict(arch)


def test_predictor_chooses_its_ridge_by_leave_one_out(tiny_space, tmp_path):
    """Without a ridge the fit takes the penalty of RIDGE_GRID with the least leave-one-out relative error: the
    closed form equals refitting without each model in turn, a noise-free law is recovered where a heavy penalty
    is not, and the choice is saved with the predictor."""
    from nasbert.latency.predictor import RIDGE_GRID, _loo_mape, _penalty

    table, archs, measured = _synthetic(tiny_space)
    noisy = np.asarray(measured) * np.random.default_rng(5).uniform(0.95, 1.05, len(measured))
    predictor = LatencyPredictor.fit(table, archs[:30], noisy[:30])
    assert predictor.ridge in RIDGE_GRID and 0 < predictor.loo_mape < 0.05
    X = np.stack([features(a, table) for a in archs[:30]])
    Z = (X - predictor.mean) / predictor.scale
    A = np.hstack([Z, np.ones((30, 1))]) / noisy[:30, None]
    value = 1e-3 * np.mean(np.diag(A.T @ A)[:-1])  # a penalty that keeps the systems well conditioned
    by_refit = []
    for i in range(30):
        keep = np.arange(30) != i
        solution = np.linalg.pinv(A[keep].T @ A[keep] + _penalty(A.shape[1], value)) @ A[keep].T @ np.ones(29)
        by_refit.append(abs(1.0 - A[i] @ solution))
    assert _loo_mape(A, A.T @ A, value) == pytest.approx(np.mean(by_refit), rel=1e-6)
    assert predictor.loo_mape == pytest.approx(min(_loo_mape(A, A.T @ A, r * np.mean(np.diag(A.T @ A)[:-1]))
                                                   for r in RIDGE_GRID))
    exact = LatencyPredictor.fit(table, archs[:30], measured[:30])
    heavy = LatencyPredictor.fit(table, archs[:30], measured[:30], ridge=0.1)
    assert accuracy(exact.predict_many(archs[30:]), measured[30:])["mape"] < 1e-4
    assert accuracy(heavy.predict_many(archs[30:]), measured[30:])["mape"] > 10 * accuracy(
        exact.predict_many(archs[30:]), measured[30:])["mape"]
    predictor.save(tmp_path)
    loaded = LatencyPredictor.load(tmp_path)
    assert (loaded.ridge, loaded.loo_mape) == (predictor.ridge, predictor.loo_mape)
    few = LatencyPredictor.fit(table, archs[:5], measured[:5])  # fewer models than unknowns: a fixed prior
    assert few.loo_mape is None and few.ridge > 0
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        LatencyPredictor.fit(table, archs[:30], measured[:30], ridge=-1.0)


def test_predictor_uses_the_shared_feature_function(tiny_space, monkeypatch):
    import nasbert.latency.predictor as predictor_module

    table, archs, measured = _synthetic(tiny_space)
    seen = []
    real = predictor_module.features
    monkeypatch.setattr(predictor_module, "features", lambda a, t: seen.append(a) or real(a, t))
    predictor = LatencyPredictor.fit(table, archs[:10], measured[:10])
    predictor.predict(archs[11])
    assert seen == archs[:10] + [archs[11]]


def test_loading_a_folder_that_is_not_a_profile_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nasbert latency --run"):
        LatencyPredictor.load(tmp_path)


def test_device_key_names_engine_threads_batch_and_length():
    info = device_info(engine="onnxruntime", device="cpu", threads=1, batch=1, seq_len=128)
    assert info.key.endswith("-cpu-onnxruntime-t1-b1-s128")
    with pytest.raises(ValueError, match="unknown engine"):
        device_info(engine="tvm", device="cpu", threads=1, batch=1, seq_len=8)


@pytest.mark.parametrize("key, value", [("engine", "tvm"), ("device", "tpu"), ("threads", 0), ("archs", 2),
                                        ("heldout_fraction", 1.0)])
def test_bad_latency_config_names_the_key(key, value):
    with pytest.raises(ConfigError, match=f"latency.{key}"):
        LatencyConfig(**{key: value})


def test_profile_writes_a_complete_portable_profile(tiny_space, tiny_teacher, tmp_path):
    config = LatencyConfig(archs=8, seq_len=16, repeats=3, rounds=1, warmup=1, table_repeats=2, group_size=4)
    report = profile_device(tiny_space, tmp_path / "profile", config=config, teacher=tiny_teacher,
                            show_progress=False)
    files = {p.name for p in (tmp_path / "profile").iterdir()}
    assert files == {"device.json", "table.json", "table_timings.json", "measurements.csv", "predictor.json",
                     "accuracy.json", "predicted_vs_measured.png"}
    saved = json.loads((tmp_path / "profile" / "accuracy.json").read_text())
    assert saved["n_train"] + saved["n_heldout"] == 8 and saved["n_heldout"] == 2
    assert set(saved["table"]) == set(saved["predictor"]) == {"mape", "max_err", "kendall_tau"}
    assert saved["teacher_latency_ms"] > 0 and report["predictor"] == saved["predictor"]
    import csv

    rows = list(csv.DictReader((tmp_path / "profile" / "measurements.csv").open()))
    assert len(rows) == 8 and {r["split"] for r in rows} == {"train", "heldout"}
    for row in rows:
        arch = Arch.parse(row["arch"])
        assert int(row["params"]) == tiny_space.num_params(arch)
        assert int(row["flops"]) == tiny_space.flops(arch, 16)
        assert float(row["table_ms"]) == pytest.approx(LatencyTable.load(tmp_path / "profile" / "table.json").predict(arch))
    predictor = LatencyPredictor.load(tmp_path / "profile")
    assert predictor.predict(Arch.parse(rows[0]["arch"])) == pytest.approx(float(rows[0]["predicted_ms"]))
    assert not list(itertools.chain((tmp_path).glob(".profile*")))

    # what the search, export and report read of it
    profile = LatencyProfile(tmp_path / "profile")
    assert profile.complete and profile.device["seq_len"] == 16 and profile.accuracy == saved
    assert profile.predictor.predict(Arch.parse(rows[0]["arch"])) == pytest.approx(float(rows[0]["predicted_ms"]))
    arch = Arch.parse(rows[0]["arch"])
    blocks = sum(profile.table.path_ms(block) for block in arch.blocks)
    ops = sum(v for k, v in profile.table.parts(arch).items()
              if not k.startswith(("embeddings@", "adapter@", "output@")))
    assert blocks == pytest.approx(ops) and blocks > 0


def test_a_run_with_no_or_several_profiles_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nasbert latency --run"):
        LatencyProfile.find(tmp_path)
    for key in ("a", "b"):
        (tmp_path / "latency" / key).mkdir(parents=True)
        for name in ("table.json", "predictor.json"):
            (tmp_path / "latency" / key / name).write_text("{}")
    with pytest.raises(ValueError, match="holds 2 latency profiles .*latency_profile="):
        LatencyProfile.find(tmp_path)
    (tmp_path / "latency" / "b" / "predictor.json").unlink()  # an incomplete one does not count
    assert LatencyProfile.find(tmp_path).path == tmp_path / "latency" / "a"
    assert LatencyProfile.find(tmp_path, tmp_path / "elsewhere").path == tmp_path / "elsewhere"


def test_int8_profile_times_int8_graphs_and_keeps_the_teacher_fp32(tiny_space, tiny_teacher, tmp_path, monkeypatch):
    import onnx

    import nasbert.latency.profile as profile_module
    import nasbert.latency.table as table_module

    graphs = []

    class Recording(profile_module.OnnxRuntimeEngine):
        def __init__(self, path, feeds, **kwargs):
            ops = {n.op_type for n in onnx.load(str(path)).graph.node}
            graphs.append(("input_ids" in feeds and len(feeds) >= 3, "MatMul" in ops, "MatMulInteger" in ops))
            super().__init__(path, feeds, **kwargs)

    monkeypatch.setattr(profile_module, "OnnxRuntimeEngine", Recording)
    monkeypatch.setattr(table_module, "OnnxRuntimeEngine", Recording)
    config = LatencyConfig(archs=4, seq_len=16, repeats=2, rounds=1, warmup=1, table_repeats=2, group_size=4,
                           precision="int8")
    profile_device(tiny_space, tmp_path / "profile", config=config, teacher=tiny_teacher, show_progress=False)
    device = json.loads((tmp_path / "profile" / "device.json").read_text())
    assert device["precision"] == "int8" and device["key"].endswith("-int8")
    whole = [g for g in graphs if g[0]]
    assert len(whole) == 4 + 1  # the models and the teacher
    assert sum(1 for g in whole if g[1] and not g[2]) == 1  # the teacher (drift reference): fp32
    assert all(g[2] for g in whole if not (g[1] and not g[2]))  # every model: int8 MatMuls
    assert any(g[2] for g in graphs if not g[0])  # table entries too
    with pytest.raises(ConfigError, match="latency.precision: int8 .* onnxruntime"):
        LatencyConfig(precision="int8", engine="torch")


def test_models_near_a_limit_are_timed_again_longer(supernet, tiny_space, tiny_teacher, monkeypatch):
    """A model within the margin of a limit gets a second, longer run that decides its latency; one far from every
    limit keeps its first timing, and without limits nothing is timed twice."""
    import nasbert.latency.models as lm

    calls = []
    real = lm.measure_interleaved

    def spy(engines, **kw):
        calls.append((sorted(engines), kw["repeats"], kw["rounds"]))
        return real(engines, **kw)

    monkeypatch.setattr(lm, "measure_interleaved", spy)
    copy = SuperNet.from_teacher(tiny_space, tiny_teacher, reorder=False).extract(
        tiny_space.teacher_arch(), drop_identity_adapters=True)
    small = supernet.extract(tiny_space.smallest_arch())
    models = {"copy": copy, "small": small}
    settings = dict(engine="onnxruntime", device="cpu", threads=1, batch=1, seq_len=32,
                    vocab_size=tiny_space.teacher.vocab_size, repeats=4, rounds=2, warmup=1)

    plain = lm.measure_models(models, tiny_teacher, **settings)
    assert plain.retimed == {} and len(calls) == 1

    calls.clear()
    # the teacher's own latency as the limit: its copy is near it (margin 0.6), the far smaller model is not
    measured = lm.measure_models(models, tiny_teacher, **settings, limits=lambda t: [t, None], edge_margin=0.6,
                                 edge_repeats=6, edge_rounds=3)
    assert calls[1] == (["__teacher__", "copy"], 6, 3)
    assert list(measured.retimed) == ["copy"]
    first = measured.retimed["copy"]
    assert first["speedup"] == pytest.approx(measured.teacher_latency_ms / first["latency_ms"])
    assert measured.latency_ms["copy"] > 0 and measured.latency_ms["small"] > 0


@pytest.mark.parametrize("speedups, runs", [((4.2, 4.05), 2), ((4.39, 3.994, 4.1), 3), ((4.1, 3.95, 3.9), 3)])
def test_a_longer_run_on_the_other_side_of_a_limit_gets_a_third_and_the_median_decides(
        supernet, tiny_space, tiny_teacher, monkeypatch, speedups, runs):
    """A model's runs near a 4x limit, at the given speed-ups over the teacher of the same run: where the first
    and the longer run disagree about the limit, a third run is made and the median of the three decides."""
    import nasbert.latency.models as lm
    from nasbert.latency.measure import summarize

    calls = []
    real = lm.measure_interleaved

    def scripted(engines, **kw):
        timings = real(engines, **kw)
        teacher_ms = timings["__teacher__"].median_ms
        timings["model"] = summarize([teacher_ms / speedups[len(calls)]])
        calls.append(sorted(engines))
        return timings

    monkeypatch.setattr(lm, "measure_interleaved", scripted)
    model = supernet.extract(tiny_space.smallest_arch())
    measured = lm.measure_models({"model": model}, tiny_teacher, engine="onnxruntime", device="cpu", threads=1,
                                 batch=1, seq_len=16, vocab_size=tiny_space.teacher.vocab_size, repeats=2, rounds=1,
                                 warmup=1, limits=lambda t: [t / 4.0], edge_margin=0.10, edge_repeats=2,
                                 edge_rounds=1)
    assert len(calls) == runs and calls[1:] == [["__teacher__", "model"]] * (runs - 1)
    got = measured.teacher_latency_ms / measured.latency_ms["model"]
    assert got == pytest.approx(sorted(speedups)[1] if runs == 3 else speedups[1])
    first = measured.retimed["model"]
    assert first["speedup"] == pytest.approx(speedups[0])
    if runs == 3:
        assert first["runs"] == pytest.approx(list(speedups))
        assert measured.first_speedup("model")["edge_runs"] == pytest.approx(list(speedups))
        assert "so a third time" in measured.retiming("model") and f"({got:.3f}x)" in measured.retiming("model")
    else:
        assert "runs" not in first and "edge_runs" not in measured.first_speedup("model")
        assert measured.retiming("model").endswith(f"longer: {got:.2f}x")
