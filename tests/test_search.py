"""Search: budgets, the pure objective, Optuna (NSGA-II, TPE, random, resume, determinism) and Ray workers.

The run inputs are fake but shaped like a real run's: the tiny space shrunk to 40 paths per block, block losses
that fall with more and wider layers, and a latency predictor fitted on a table where wider ops are slower.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import zlib

import numpy as np
import pytest
import yaml

from nasbert.config import ConfigError
from nasbert.latency import LatencyPredictor, LatencyTable, features
from nasbert.latency.table import table_keys
from nasbert.search import (
    Budget, Objective, load_block_losses, pareto_front, parse_budget, parse_budgets, run_search,
)
from nasbert.space import Arch, BlockArch, SpaceError

BUDGETS = ("2x", "3x", "4x", "12k")
OP_GAIN = {"mha": 0.9, "ffn": 1.0, "sepconv3": 0.6, "sepconv5": 0.65, "sepconv7": 0.7}
OP_COST = {"embeddings": 0.3, "mha": 1.0, "ffn": 0.8, "sepconv3": 0.4, "sepconv5": 0.45, "sepconv7": 0.5,
           "adapter": 0.1, "output": 0.1}


def _block_loss(block: int, path: BlockArch) -> float:
    """Falls with more and wider layers, plus a small deterministic jitter so that no two paths tie."""
    gain = sum(OP_GAIN[op] for op in path.layers) * path.width / 32
    return 1.0 + 0.1 * block - 0.12 * gain + (zlib.crc32(str(path).encode()) % 1000) * 1e-5


def _stratified_paths(space, rng, n=40):
    """``n`` distinct paths, as many of each length (1-4 layers) so that small and large models both exist."""
    ops = [o for o in space.ops if o != "identity"]
    k, paths = space.slots_per_block, []
    while len(paths) < n:
        j = len(paths) % k + 1
        layers = tuple(str(op) for op in rng.choice(ops, size=j))
        path = BlockArch(int(rng.choice(space.hidden_choices)), layers + ("identity",) * (k - j))
        if path not in paths:
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def run_inputs(tiny_space):
    rng = np.random.default_rng(0)
    space = tiny_space.with_candidates([_stratified_paths(tiny_space, rng) for _ in range(tiny_space.num_blocks)])
    losses = [{str(p): _block_loss(n, p) for p in space.candidates[n]} for n in range(space.num_blocks)]

    def entry(key):  # wider is slower, by a law the predictor then corrects
        kind, _, width = key.partition("@")
        kind = "ffn" if kind.startswith("ffn") else kind  # a teacher cut's pruned FFN (ffn{I}) costs as an ffn
        return OP_COST[kind] * (0.3 + 0.7 * (int(width.split("->")[-1]) / 32) ** 2)

    table = LatencyTable({key: entry(key) for key in table_keys(tiny_space)},
                         device={"key": "synthetic", "seq_len": 16})
    archs = [tiny_space.sample(rng) for _ in range(40)]
    truth = np.array([1.1, 1.05, 0.9, 1.0, 0.03, 0.05])
    measured = [float(features(a, table) @ truth + 0.2) for a in archs]
    teacher_ms = float(features(tiny_space.teacher_arch(), table) @ truth + 0.2)
    predictor = LatencyPredictor.fit(table, archs, measured, teacher_latency_ms=teacher_ms)
    return space, losses, predictor


@pytest.fixture(scope="module")
def objective(run_inputs):
    space, losses, predictor = run_inputs
    return Objective(space, losses, predictor)


def _all_archs(objective):
    counts = objective.choice_counts()
    return [objective.arch_from_params({"block0": i, "block1": j})
            for i in range(counts["block0"]) for j in range(counts["block1"])]


def _best_feasible(objective, records, budget):
    t = objective.teacher_latency_ms
    ok = [r.evaluation.proxy_loss for r in records if budget.allows(r.evaluation.latency_ms, r.evaluation.params, t)]
    return min(ok) if ok else None


# ---------------------------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("text, kind, value, name", [
    ("12.5ms", "latency_ms", 12.5, "12.5ms"), ("12.5 ms", "latency_ms", 12.5, "12.5ms"),
    ("3MS", "latency_ms", 3, "3ms"),
    ("4x", "speedup", 4, "4x"), ("4X", "speedup", 4, "4x"), ("2.5x", "speedup", 2.5, "2.5x"),
    ("10M", "params", 10_000_000, "10M"), ("500k", "params", 500_000, "500k"), ("1.5m", "params", 1_500_000, "1.5M"),
    ("12000000", "params", 12_000_000, "12M"), ("12345", "params", 12345, "12345"), (" 4x ", "speedup", 4, "4x"),
])
def test_budget_forms_parse(text, kind, value, name):
    b = parse_budget(text)
    assert (b.kind, b.value, b.name) == (kind, value, name)
    assert parse_budget(b.name) == Budget(kind, value, b.name)


@pytest.mark.parametrize("text", ["", "fast", "4 y", "-3ms", "0x", "1x", "0.5x", "12.5.1ms", "1.5", "ms", "4x4",
                                  "0"])
def test_bad_budgets_name_the_text_and_the_accepted_forms(text):
    with pytest.raises(ConfigError, match=re.escape(repr(text))):
        parse_budget(text)


def test_budget_limits_and_allows():
    teacher = 20.0
    assert parse_budget("4x").latency_limit_ms(teacher) == 5.0 and parse_budget("4x").params_limit() is None
    assert parse_budget("7ms").latency_limit_ms(None) == 7.0
    assert parse_budget("10M").latency_limit_ms(teacher) is None and parse_budget("10M").params_limit() == 10**7
    assert parse_budget("4x").allows(5.0, 10**9, teacher) and not parse_budget("4x").allows(5.01, 1, teacher)
    assert parse_budget("10M").allows(99.0, 10**7, teacher) and not parse_budget("10M").allows(0.1, 10**7 + 1, teacher)
    with pytest.raises(ConfigError, match="teacher latency"):
        parse_budget("4x").allows(1.0, 1, None)
    assert [b.name for b in parse_budgets("2x, 3x,10M")] == ["2x", "3x", "10M"]
    with pytest.raises(ConfigError, match="twice"):
        parse_budgets(["4x", "4X"])
    assert sorted(parse_budgets(["4x", "2x", "15ms"]), key=lambda b: b.sort_key(teacher))[0].name == "15ms"


# ---------------------------------------------------------------------------------------------------- objective


def test_objective_is_pure_and_exact(objective, run_inputs):
    space, losses, predictor = run_inputs
    rng = np.random.default_rng(1)
    for _ in range(20):
        arch = space.sample(rng)
        ev = objective(arch)
        assert ev == objective(arch)  # pure: same arch, same evaluation
        assert ev.proxy_loss == pytest.approx(sum(losses[n][str(b)] for n, b in enumerate(arch.blocks)), abs=1e-12)
        assert ev.params == space.num_params(arch) and ev.flops == space.flops(arch, 16)  # seq_len of the profile
        assert ev.latency_ms == predictor.predict(arch)
    assert objective.seq_len == 16 and objective.teacher_latency_ms == predictor.teacher_latency_ms


def test_a_path_without_a_recorded_loss_is_a_clear_error(run_inputs, tiny_space):
    space, losses, predictor = run_inputs
    arch = Arch(tuple(space.candidates[n][0] for n in range(space.num_blocks)))
    partial = [dict(losses[0]), dict(losses[1])]
    del partial[1][str(arch.blocks[1])]
    objective = Objective(space, partial, predictor)
    with pytest.raises(SpaceError, match="no recorded validation loss"):
        objective(arch)
    assert arch.blocks[1] not in objective.choices[1]  # and samplers never pick it
    with pytest.raises(SpaceError, match="no surviving candidates"):
        Objective(tiny_space, losses, predictor)


def test_encoding_round_trips(objective, run_inputs):
    space = run_inputs[0]
    assert objective.choice_counts() == {"block0": 40, "block1": 40}
    for params in ({"block0": 0, "block1": 0}, {"block0": 39, "block1": 7}, {"block0": np.int64(5), "block1": 12}):
        arch = objective.arch_from_params(params)
        assert space.contains(arch) and objective.params_from_arch(arch) == {k: int(v) for k, v in params.items()}
    with pytest.raises(ValueError, match="block1"):
        objective.arch_from_params({"block0": 0, "block1": 40})
    with pytest.raises(SpaceError, match="not among the searched candidates"):
        objective.params_from_arch(Arch((space.candidates[0][0], BlockArch(16, ("ffn",) * 4))))


def test_objective_from_a_run_directory(run_inputs, tmp_path):
    space, losses, predictor = run_inputs
    data = space.to_dict()
    data["candidates"] = [[{"path": str(p), "valid_loss": losses[n][str(p)], "params": 1, "flops": 1}
                           for p in block] for n, block in enumerate(space.candidates)]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_block_losses(tmp_path / "space.yaml") == losses
    with pytest.raises(FileNotFoundError, match="nasbert latency"):
        Objective.from_run(tmp_path)
    predictor.save(tmp_path / "latency" / "dev-a")
    objective = Objective.from_run(tmp_path)
    arch = space.sample(np.random.default_rng(2))
    assert objective(arch) == Objective(space, losses, predictor)(arch)
    predictor.save(tmp_path / "latency" / "dev-b")
    with pytest.raises(ValueError, match="dev-a, dev-b"):
        Objective.from_run(tmp_path)
    assert Objective.from_run(tmp_path, latency_profile=tmp_path / "latency" / "dev-b")(arch) == objective(arch)


# ---------------------------------------------------------------------------------------------------- Optuna


@pytest.fixture(scope="module")
def nsga2(objective, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    return run_search(objective, budgets=BUDGETS, trials=150, population_size=20, seed=0, out_dir=out,
                      storage="memory", show_progress=False), out


def test_nsga2_front_is_non_dominated_and_sorted(nsga2):
    result, _ = nsga2
    points = [(c.evaluation.proxy_loss, c.evaluation.latency_ms) for c in result.front]
    assert len(points) >= 3
    lat = [p[1] for p in points]
    loss = [p[0] for p in points]
    assert lat == sorted(lat) and loss == sorted(loss, reverse=True)
    every = [(r.evaluation.proxy_loss, r.evaluation.latency_ms) for r in result.trials]
    for p in points:  # nothing among all trials dominates a front point
        assert not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in every)
    for q in every:  # and every trial is dominated by (or equal to) a front point
        assert any(p[0] <= q[0] and p[1] <= q[1] for p in points)
    assert len(result.trials) == 150


def test_nsga2_per_budget_winners_are_feasible_and_best(nsga2, objective):
    result, _ = nsga2
    t = objective.teacher_latency_ms
    for b in parse_budgets(BUDGETS):
        ranked = result.selections[b.name]
        assert 1 <= len(ranked) <= 5
        assert all(b.allows(ev.latency_ms, ev.params, t) for _, ev in ranked)
        assert [ev.proxy_loss for _, ev in ranked] == sorted(ev.proxy_loss for _, ev in ranked)
        assert len({arch for arch, _ in ranked}) == len(ranked)
        assert ranked[0].evaluation.proxy_loss == _best_feasible(objective, result.trials, b)
        assert ranked[0] == result.best(b.name) and ranked[0].evaluation == objective(ranked[0].arch)
    # The search beats chance: within 4x it does better than the median feasible architecture of the space.
    b4 = parse_budget("4x")
    feasible = [ev.proxy_loss for ev in map(objective, _all_archs(objective)) if b4.allows(ev.latency_ms, ev.params, t)]
    assert result.best("4x").evaluation.proxy_loss < np.percentile(feasible, 10)


def test_search_outputs_exist_and_parse(nsga2, objective):
    result, out = nsga2
    assert result.files == {"trials_csv": out / "trials.csv", "pareto_json": out / "pareto.json",
                            "pareto_png": out / "pareto.png"}
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 150 and {f"feasible_{b}" for b in ("2x", "3x", "4x", "12k")} <= set(rows[0])
    row = rows[7]
    ev = objective(Arch.parse(row["arch"]))
    assert float(row["proxy_loss"]) == ev.proxy_loss and int(row["params"]) == ev.params
    assert row["feasible_12k"] == str(int(ev.params <= 12_000))
    data = json.loads((out / "pareto.json").read_text())
    assert data["teacher_latency_ms"] == objective.teacher_latency_ms and data["n_trials"] == 150
    assert [f["arch"] for f in data["front"]] == [str(c.arch) for c in result.front]
    budgets = {b["budget"]: b for b in data["budgets"]}
    assert set(budgets) == {"2x", "3x", "4x", "12k"}
    assert budgets["4x"]["best"][0]["arch"] == str(result.best("4x").arch)
    assert budgets["4x"]["latency_limit_ms"] == pytest.approx(objective.teacher_latency_ms / 4)
    assert budgets["12k"]["params_limit"] == 12_000 and budgets["12k"]["latency_limit_ms"] is None
    assert Arch.from_dict({"blocks": data["front"][0]["blocks"]}) == result.front[0].arch
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_search_resumes_from_sqlite(objective, tmp_path):
    import optuna

    first = run_search(objective, budgets=["3x"], trials=10, population_size=8, out_dir=tmp_path, show_progress=False)
    before = [(r.number, r.arch) for r in first.trials]
    second = run_search(objective, budgets=["3x"], trials=25, population_size=8, out_dir=tmp_path,
                        show_progress=False)
    assert (tmp_path / "study.db").is_file() and second.info["storage"].startswith("sqlite:///")
    study = optuna.load_study(study_name="nasbert", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 25 and len(second.trials) == 25
    assert [(r.number, r.arch) for r in second.trials[:10]] == before
    third = run_search(objective, budgets=["3x"], trials=25, population_size=8, out_dir=tmp_path, show_progress=False)
    assert len(optuna.load_study(study_name="nasbert", storage=f"sqlite:///{tmp_path / 'study.db'}").trials) == 25
    assert third.trials == second.trials


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_tpe_and_random_samplers(objective, sampler):
    result = run_search(objective, budgets=["3x", "12k"], sampler=sampler, trials=40, storage="memory", seed=1,
                        show_progress=False)
    studies = {r.study for r in result.trials}
    assert studies == ({"nasbert-3x", "nasbert-12k"} if sampler == "tpe" else {"nasbert"})
    assert len(result.trials) == 40 * len(studies)
    for b in parse_budgets(["3x", "12k"]):
        best = result.best(b)
        assert best is not None and b.allows(best.evaluation.latency_ms, best.evaluation.params,
                                             objective.teacher_latency_ms)
        assert best.evaluation.proxy_loss == _best_feasible(objective, result.trials, b)


def test_tpe_stays_within_its_budget(objective):
    result = run_search(objective, budgets=["4x"], sampler="tpe", trials=40, storage="memory", show_progress=False)
    b, t = parse_budget("4x"), objective.teacher_latency_ms
    late = [r for r in result.trials[20:] if not b.allows(r.evaluation.latency_ms, r.evaluation.params, t)]
    early = [r for r in result.trials[:20] if not b.allows(r.evaluation.latency_ms, r.evaluation.params, t)]
    assert len(late) < len(early)  # the constraint steers sampling into the budget


def test_an_impossible_budget_selects_nothing_and_warns(objective, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="nasbert.search"):
        result = run_search(objective, budgets=["3x", "0.01ms", "100"], trials=20, population_size=10,
                            storage="memory", out_dir=tmp_path, show_progress=False)
    assert result.selections["0.01ms"] == [] and result.best("100") is None and result.best("3x") is not None
    fastest = min(r.evaluation.latency_ms for r in result.trials)
    smallest = min(r.evaluation.params for r in result.trials)
    messages = [m for m in result.warnings if "0.01ms" in m]
    assert len(messages) == 1 and f"{fastest:.4g} ms" in messages[0] and f"{smallest:,} params" in messages[0]
    assert any("budget 100 " in r.getMessage() for r in caplog.records)
    saved = {b["budget"]: b for b in json.loads((tmp_path / "pareto.json").read_text())["budgets"]}
    assert saved["0.01ms"]["best"] == [] and saved["0.01ms"]["feasible_trials"] == 0
    assert not (tmp_path / "study.db").exists()


def test_a_seed_makes_the_search_repeatable(objective):
    def run(seed):
        result = run_search(objective, budgets=BUDGETS, trials=40, population_size=10, storage="memory", seed=seed,
                            show_progress=False)
        return [(r.number, r.arch, r.evaluation) for r in result.trials]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_bad_search_arguments_are_errors(objective, run_inputs):
    with pytest.raises(ValueError, match="unknown sampler"):
        run_search(objective, sampler="cmaes", trials=5, show_progress=False)
    with pytest.raises(ValueError, match="RDB URL"):
        run_search(objective, storage="study.db", trials=5, show_progress=False)
    space, losses, predictor = run_inputs
    no_teacher = LatencyPredictor(predictor.table, coef=predictor.coef, intercept=predictor.intercept,
                                  mean=predictor.mean, scale=predictor.scale)
    with pytest.raises(ConfigError, match="no teacher latency"):
        run_search(Objective(space, losses, no_teacher), budgets=["4x"], trials=5, show_progress=False)


def test_pareto_front_keeps_one_record_per_architecture(nsga2):
    result, _ = nsga2
    doubled = result.trials + [type(r)(r.number + 1000, r.arch, r.evaluation, r.study) for r in result.trials]
    assert [r.candidate for r in pareto_front(doubled)] == result.front


# ---------------------------------------------------------------------------------------------------- Ray


def test_ray_workers_share_one_study_and_resume_it(objective, tmp_path):
    pytest.importorskip("ray")
    import optuna
    import ray

    from nasbert.search.ray_search import run_ray_search

    trials = 40
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        result = run_ray_search(objective, budgets=BUDGETS, trials=trials, workers=2, population_size=10, seed=0,
                                out_dir=tmp_path, show_progress=False)
        study = optuna.load_study(study_name="nasbert", storage=f"sqlite:///{tmp_path / 'study.db'}")
        states = [t.state for t in study.get_trials()]
        assert states.count(optuna.trial.TrialState.COMPLETE) == trials  # exactly the count, from both workers
        more = run_ray_search(objective, budgets=BUDGETS, trials=trials + 10, workers=2, population_size=10,
                              seed=0, out_dir=tmp_path, show_progress=False)  # the same study, 10 more trials
    finally:
        ray.shutdown()
    assert len(more.trials) == trials + 10 and {(r.number, r.arch) for r in result.trials} <= \
        {(r.number, r.arch) for r in more.trials}
    reference = run_search(objective, budgets=BUDGETS, trials=trials, population_size=10, storage="memory",
                           seed=0, show_progress=False)
    assert len(result.trials) == trials and result.info["backend"] == "ray" and result.info["workers"] == 2
    t = objective.teacher_latency_ms
    for b in parse_budgets(BUDGETS):
        for trial in result.trials:  # each reported evaluation is the objective's
            assert trial.evaluation == objective(trial.arch)
        best = result.best(b)
        assert best is not None and b.allows(best.evaluation.latency_ms, best.evaluation.params, t)
        assert best.evaluation.proxy_loss == _best_feasible(objective, result.trials, b)
        assert best.evaluation.proxy_loss <= 1.5 * reference.best(b).evaluation.proxy_loss
    assert len(result.front) >= 2 and len(result.front) >= len(reference.front) / 4
    assert json.loads((tmp_path / "pareto.json").read_text())["search"]["backend"] == "ray"
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert len(rows) == trials + 10
