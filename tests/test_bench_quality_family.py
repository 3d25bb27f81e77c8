"""bench/quality_family.py: the family's quality table from pooled fine-tuning runs and a timing."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import quality_family  # noqa: E402  (bench/ is not a package)

TASKS = ("sst2", "sick", "cola")


def _scores(base: float, seeds) -> dict:
    return {t: {s: base + i + 0.5 * s for s in seeds} for i, t in enumerate(TASKS)}


def _timing(speedups: dict[str, list[float]]) -> dict:
    return {"teacher_ms": [30.0, 31.0, 29.0], "teacher_params": 22_000_000, "models": {
        path: {"speedups": v, "latency_ms": [30.0 / x for x in v], "params": 1_000_000} for path, v in
        speedups.items()}}


def _points(models) -> dict:
    return {m: {t: {"lr": 2e-4, "pair_encoding": "cross"} for t in TASKS} for m in models}


def test_build_panels_leads_and_teacher_seeds():
    scores = {"teacher": _scores(80.0, range(5)), "member": _scores(78.0, range(5)),
              "drop": _scores(76.0, range(5)), "uni": _scores(70.0, range(3))}
    scores["teacher"]["cola"].update({5: 70.0, 6: 70.0})  # more seeds on one task
    rows = [{"budget": "2x", "kind": "searched", "name": "member", "path": "m"},
            {"budget": "2x", "kind": "layerdrop", "name": "drop", "path": "d"},
            {"budget": "2x", "kind": "uniform", "name": "uni", "path": "u"}]
    timing = _timing({"m": [2.1, 2.2, 2.0], "d": [2.9, 3.0, 3.1], "u": [2.3, 2.3, 2.4]})
    out = quality_family.build(rows, scores, _points(scores), timing, [0, 1, 2, 3, 4], 3)

    teacher_cola = [82.0 + 0.5 * s for s in range(5)] + [70.0, 70.0]
    assert out["teacher"]["cola"] == teacher_cola
    expected = (sum(80.0 + 0.5 * s for s in range(5)) / 5 + sum(81.0 + 0.5 * s for s in range(5)) / 5
                + sum(teacher_cola) / 7) / 3
    assert out["teacher_panel_mean"] == pytest.approx(expected)
    member, drop, uni = out["rows"]
    assert member["seeds"] == [0, 1, 2, 3, 4] and uni["seeds"] == [0, 1, 2]
    assert member["panel"] == pytest.approx([79.0 + 0.5 * s for s in range(5)])
    assert member["speedup"] == pytest.approx(2.1) and drop["speedup"] == pytest.approx(3.0)
    assert member["panel_pct_of_teacher"] == pytest.approx(100 * 80.0 / expected)
    lead = out["leads"]["2x member - drop"]
    assert lead["lead"] == pytest.approx(2.0) and lead["per_seed"] == pytest.approx({s: 2.0 for s in range(5)})
    assert lead["beats_by_more_than_spread"]
    lead = out["leads"]["2x member - uni"]
    assert lead["lead"] == pytest.approx(8.0)  # over the seeds both have (0-2), not 80.0 - 71.5
    assert set(lead["per_seed"]) == {0, 1, 2}


def test_build_refuses_too_few_seeds_and_missed_budget():
    scores = {"teacher": _scores(80.0, range(5)), "member": _scores(78.0, range(2))}
    rows = [{"budget": "3x", "kind": "searched", "name": "member", "path": "m"}]
    with pytest.raises(SystemExit, match="fewer than --min-seeds 3"):
        quality_family.build(rows, scores, _points(scores), _timing({"m": [3.2]}), [0, 1, 2, 3, 4], 3)
    scores["member"] = _scores(78.0, range(5))
    with pytest.raises(SystemExit, match="misses its budget 3x"):
        quality_family.build(rows, scores, _points(scores), _timing({"m": [2.9, 3.1, 2.95]}), [0, 1, 2, 3, 4], 3)


def test_row_parsing():
    row = quality_family.parse_row("4x:uniform:uniform-L2-H256=runs/models/u")
    assert row == {"budget": "4x", "kind": "uniform", "name": "uniform-L2-H256", "path": "runs/models/u"}
    for bad in ("4x:other:name=dir", "4x:uniform:name", "four:uniform:name=dir", "4x:name=dir"):
        with pytest.raises(SystemExit):
            quality_family.parse_row(bad)


def test_add_timing_keeps_each_models_run():
    first = {**_timing({"m": [2.1, 2.2, 2.0]}), "date": "d1", "machine": "x"}
    later = {**_timing({"n": [2.5, 2.6, 2.4]}), "date": "d2", "machine": "y", "teacher_ms": [50.0, 52.0, 51.0]}
    merged = quality_family.add_timing(first, later)
    assert merged["teacher_ms"] == first["teacher_ms"] and merged["models"]["m"] == first["models"]["m"]
    assert merged["models"]["n"]["run"] == {"date": "d2", "teacher_ms": [50.0, 52.0, 51.0], "machine": "y"}
    assert "n" not in first["models"]  # the kept timing is not changed in place
    scores = {"teacher": _scores(80.0, range(5)), "new": _scores(78.0, range(5))}
    rows = [{"budget": "2x", "kind": "searched", "name": "new", "path": "n"}]
    out = quality_family.build(rows, scores, _points(scores), merged, [0, 1, 2, 3, 4], 3)
    assert out["rows"][0]["speedup"] == pytest.approx(2.5)
    assert out["rows"][0]["latency_ms"] == pytest.approx(30.0 / 2.5)  # at this table's teacher latency
    assert "new" in quality_family.timed_apart_note(out) and "teacher 51.00 ms" in quality_family.timed_apart_note(out)
    assert quality_family.timed_apart_note({**out, "timing": first, "rows": []}) == ""
