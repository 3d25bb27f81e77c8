"""The probe (a short fine-tune on a sentence-pair task) and the search's starting points among a budget's candidates."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from nasbert import Arch, SearchSpace, SuperNet
from nasbert.budgets import parse_budgets
from nasbert.finetune import FinetuneConfig, finetune
from nasbert.finetune.tasks import TaskError
from nasbert.finetune.trainer import FinetuneError
from nasbert.search.objective import Evaluation
from nasbert.search.optuna_search import TrialRecord, select_per_budget
from nasbert.search.probe import BUILTIN_PROBE, PROBE_TEST, PROBE_TRAIN, Probe, ProbeSettings, load_probe, \
    weights_digest, write_builtin_probe


def test_the_builtin_probe_is_qnli_pairs_split_without_overlap():
    task = load_probe()
    assert task.task.name == "qnli" and len(task.train) == PROBE_TRAIN and len(task.dev) == PROBE_TEST
    assert all(e.text_b and e.label in (0, 1) for e in task.train + task.dev)
    assert not {(e.text_a, e.text_b) for e in task.train} & {(e.text_a, e.text_b) for e in task.dev}
    assert 0.4 < sum(e.label for e in task.dev) / len(task.dev) < 0.6  # near-balanced: chance is 50%
    smaller = load_probe(train=10, test=5)
    assert smaller.train == task.train[:10] and smaller.dev == task.dev[:5]
    with pytest.raises(TaskError, match="at least one training and one test row"):
        load_probe(train=0)
    with pytest.raises(TaskError, match="train \\+ test must not exceed"):
        load_probe(train=PROBE_TRAIN, test=PROBE_TRAIN)


def test_write_builtin_probe_makes_the_shipped_file(tmp_path):
    import gzip

    rows = gzip.decompress(BUILTIN_PROBE.read_bytes()).decode("utf-8").splitlines()
    source = tmp_path / "dev.tsv"
    source.write_text("\n".join(rows + ["99999\tWhy?\tBecause.\tentailment"]) + "\n", encoding="utf-8")
    written = write_builtin_probe(source, tmp_path / "probe.tsv.gz").read_bytes()
    # the same rows (the compressed bytes depend on the zlib build), and no timestamp in the header
    assert gzip.decompress(written) == gzip.decompress(BUILTIN_PROBE.read_bytes()) and written[4:8] == b"\0\0\0\0"
    source.write_text("\n".join(rows[:10]) + "\n", encoding="utf-8")
    with pytest.raises(TaskError, match="at least 3000 rows"):
        write_builtin_probe(source, tmp_path / "short.tsv.gz")


def _tiny_model(tiny_space, tiny_teacher_dir):
    space = SearchSpace.elastic_for(tiny_space.teacher)
    source = SuperNet.from_teacher(space, tiny_teacher_dir, reorder="units").eval()
    return source.extract(space.layer_dropped(1), drop_identity_adapters=True)


def test_probe_score_is_the_fine_tuned_accuracy_and_is_not_trained_twice(tiny_space, tiny_teacher_dir, tmp_path):
    model = _tiny_model(tiny_space, tiny_teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    task = load_probe(train=48, test=32)
    settings = ProbeSettings(epochs=1.0, max_seq_len=32, batch_size=16)
    probe = Probe(task, work_dir=tmp_path / "probe", settings=settings)
    score = probe.score(model, tokenizer, name="m")
    folder = tmp_path / "probe" / f"m-{weights_digest(model)}-{probe.recipe_digest()}"
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    assert score == pytest.approx(100 * metrics["dev"]["accuracy"]) and metrics["dev_examples"] == 32
    # the same recipe by hand gives the same score
    by_hand = finetune(folder / "model", task, out=tmp_path / "by-hand", onnx=False, progress=False, device="cpu",
                       config=FinetuneConfig(epochs=1.0, batch_size=16, lr=settings.lr, max_seq_len=32, seed=0,
                                             pooling="mean", freeze_word_embeddings=True, threads=1))
    assert 100 * by_hand.metrics["accuracy"] == pytest.approx(score)
    mtime = (folder / "run" / "metrics.json").stat().st_mtime_ns
    assert probe.score(model, tokenizer, name="m") == score
    assert (folder / "run" / "metrics.json").stat().st_mtime_ns == mtime  # read back, not trained again
    # a run of the same recipe that evaluated after every epoch (as probes once did) is read back too: same score
    shutil.rmtree(folder / "run")
    shutil.copytree(tmp_path / "by-hand", folder / "run")
    assert probe.score(model, tokenizer, name="m") == pytest.approx(score)
    assert (folder / "run" / "finetune.json").read_text() == (tmp_path / "by-hand" / "finetune.json").read_text()
    # another recipe is another run, beside this one, which stays
    other = Probe(task, work_dir=tmp_path / "probe", settings=dataclasses.replace(settings, lr=2 * settings.lr))
    assert other.recipe_digest() != probe.recipe_digest()
    other.score(model, tokenizer, name="m")
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == sorted(
        [folder.name, f"m-{weights_digest(model)}-{other.recipe_digest()}"])
    # a run the folder holds that another recipe made (written by hand here) is not read back: its fine-tune
    # finds it and refuses to mix them
    shutil.rmtree(folder / "run")
    shutil.copytree(other.work_dir / f"m-{weights_digest(model)}-{other.recipe_digest()}" / "run", folder / "run")
    with pytest.raises(FinetuneError, match="other settings"):
        probe.score(model, tokenizer, name="m")
    with torch.no_grad():  # other weights: another run
        next(model.parameters()).add_(1.0)
    assert weights_digest(model) not in folder.name


def test_probes_run_side_by_side_score_as_one_at_a_time(tiny_space, tiny_teacher_dir, tmp_path):
    """score_many runs the models' fine-tunes in worker processes, two at a time: each gets the score it gets
    alone in this process, and a model probed before is read back, not trained again."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    task = load_probe(train=48, test=32)
    settings = ProbeSettings(epochs=1.0, max_seq_len=32, batch_size=16)
    models = [_tiny_model(tiny_space, tiny_teacher_dir) for _ in range(3)]
    for i, model in enumerate(models[1:], start=1):
        with torch.no_grad():
            next(model.parameters()).mul_(1.0 + 0.5 * i)
    alone = Probe(task, work_dir=tmp_path / "alone", settings=dataclasses.replace(settings, workers=1))
    want = [alone.score(m, tokenizer, name=f"m{i}") for i, m in enumerate(models)]
    together = Probe(task, work_dir=tmp_path / "together", settings=settings)
    assert together.recipe_digest() == alone.recipe_digest()  # how many run at once is not the recipe
    got = together.score_many([(m, f"m{i}") for i, m in enumerate(models[:2])], tokenizer)
    assert got == want[:2]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "together").glob("*/run/metrics.json")}
    assert len(stamps) == 2
    assert together.score_many([(m, f"m{i}") for i, m in enumerate(models)], tokenizer) == want
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # the first two read back


def _record(number: int, arch: str, loss: float, ms: float, enqueued: bool = False) -> TrialRecord:
    return TrialRecord(number, Arch.parse(arch), Evaluation(proxy_loss=loss, latency_ms=ms, params=1000, flops=1),
                       enqueued=enqueued)


def test_a_budgets_candidates_are_its_best_trials_then_its_best_starting_points():
    a, b, c, d, e = ("64:mha,ffn", "64:mha,identity", "64:identity,ffn", "64:ffn,identity", "64:identity,identity")
    records = [_record(0, a, 0.5, 5.0, enqueued=True), _record(1, b, 0.1, 4.0), _record(2, c, 0.2, 4.0),
               _record(3, d, 0.7, 3.0, enqueued=True), _record(4, e, 0.9, 2.0, enqueued=True),
               _record(5, b, 0.1, 4.0)]  # a repeat of trial 1
    budgets = parse_budgets(["2x"])  # teacher 10 ms: at most 5 ms
    # one starting point per attention depth: 0 (depth 1) and 3 (depth 0, the better of 3 and 4)
    chosen = select_per_budget(records, budgets, 10.0, top_k=2, starting_k=1)["2x"]
    assert [r.number for r in chosen] == [1, 2, 0, 3]
    assert [r.number for r in select_per_budget(records, budgets, 10.0, top_k=2, starting_k=2)["2x"]] == \
        [1, 2, 0, 3, 4]
    assert [r.number for r in select_per_budget(records, budgets, 10.0, top_k=2)["2x"]] == [1, 2]
    # a starting point among the best trials is not counted twice
    chosen = select_per_budget(records, budgets, 10.0, top_k=3, starting_k=1)["2x"]
    assert [r.number for r in chosen] == [1, 2, 0, 3]
    tight = select_per_budget(records, parse_budgets(["4x"]), 10.0, top_k=1, starting_k=5)["4x"]  # <= 2.5 ms
    assert [r.number for r in tight] == [4]


def test_a_budgets_starting_points_span_the_depths_of_its_band_and_the_predictors_margin():
    """Teacher 12 ms: 2x allows 6 ms, 3x 4 ms. Each budget's starting points are its band's best per attention
    depth: within the margin below its limit, within the margin above it (the export's timing decides), and below
    the margin (a sure one, where the depth's widest may measure over the limit)."""
    deep, wide, shallow = ("64:mha,ffn32|64:mha,ffn32|64:mha,ffn32", "64:mha,ffn|64:mha,ffn|64:identity,identity",
                           "64:mha,ffn|64:identity,identity|64:identity,identity")
    records = [_record(0, "64:mha4,ffn|64:mha2,ffn|64:mha,identity", 0.05, 5.5),  # the sampler's: best proxy
               _record(1, deep, 0.40, 6.3, enqueued=True),   # 5% over 2x's limit: in its margin
               _record(2, deep.replace("ffn32", "ffn16"), 0.45, 5.8, enqueued=True),
               _record(3, wide, 0.30, 5.9, enqueued=True),
               _record(4, wide.replace("ffn|", "ffn48|"), 0.25, 4.3, enqueued=True),  # 3x's margin: 3x's, not 2x's
               _record(5, shallow, 0.50, 3.0, enqueued=True),
               _record(6, "64:mha,ffn|64:mha,identity|64:identity,identity", 0.32, 7.0, enqueued=True),  # too slow
               _record(7, deep.replace("ffn32", "ffn8"), 0.60, 5.0, enqueued=True)]  # 2x's with room to spare
    budgets = parse_budgets(["2x", "3x"])
    chosen = select_per_budget(records, budgets, 12.0, top_k=1, starting_k=1, edge_margin=0.1)
    # depth 3: within the margin below the limit, within the margin above it, below the margin; depth 2
    assert [r.number for r in chosen["2x"]] == [0, 2, 1, 7, 3]
    without = select_per_budget(records, budgets, 12.0, top_k=1, starting_k=1)
    assert [r.number for r in without["2x"]] == [0, 2, 4]  # no margin: 3x's band starts at its limit
    assert [r.number for r in chosen["3x"]] == [5, 4]  # 5 is the best that meets 3x; then 4 from its margin
    # a budget no trial meets gets no starting point either
    assert select_per_budget(records, parse_budgets(["10x"]), 12.0, top_k=1, starting_k=1, edge_margin=0.1) == \
        {"10x": []}


def test_the_probe_ranks_the_search_candidates_and_one_starting_point_per_depth():
    """Of the starting points that meet a budget on measured latency, the export probes the one with the highest
    cosine at each attention depth (ties: the faster), and every candidate the sampler proposed."""
    from nasbert.export.family_export import _Candidate, _one_per_depth

    def cand(arch: str, enqueued: bool, source: str = "teacher") -> _Candidate:
        return _Candidate(Arch.parse(arch), source, "starting point" if enqueued else "search #1", 1.0, 0.5,
                          enqueued=enqueued)

    sampled = (0.99, 5.0, cand("64:mha2,ffn16|64:mha1,ffn8|64:mha,identity", False))
    deep_wide = (0.90, 5.0, cand("64:mha,ffn32|64:mha,ffn32|64:mha,identity", True))
    deep_thin = (0.85, 4.0, cand("64:mha,ffn16|64:mha,ffn16|64:mha,identity", True))
    deep_tie = (0.90, 4.5, cand("64:mha,ffn32|64:mha,ffn16|64:mha,identity", True))
    shallow = (0.80, 3.0, cand("64:mha,ffn|64:identity,identity|64:identity,identity", True))
    supernet = (0.70, 5.0, cand("64:mha,ffn|64:identity,identity|64:identity,identity", True, "supernet"))
    pool = [sampled, deep_wide, deep_thin, deep_tie, shallow, supernet]
    assert _one_per_depth(pool) == [sampled, deep_tie, shallow, supernet]  # each weight version on its own
    assert _one_per_depth([deep_thin]) == [deep_thin]
