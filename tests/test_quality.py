"""The free baselines (layer-dropped teachers, uniform models) and the quality report, on tiny models."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from nasbert import SearchSpace, SuperNet
from nasbert.export.hf import save_hf_model
from nasbert.finetune import TaskError, load_task
from nasbert.modeling import NasBertModel
from nasbert.quality import choose_baselines, kept_layers, layer_counts, layerdrop_baselines, uniform_baselines
from nasbert.quality.baselines import ROW_KINDS, build_raw, serves
from nasbert.quality.report import leads, markdown_table, plot, proxy_correlation
from nasbert.search import parse_budgets

from conftest import copy_run
from test_pipeline import _nasbert


def _dropped(teacher: BertModel, keep: list[int]) -> BertModel:
    """What a user writes by hand: the teacher with only the ``keep`` layers."""
    model = copy.deepcopy(teacher)
    model.encoder.layer = torch.nn.ModuleList(model.encoder.layer[i] for i in keep)
    model.config.num_hidden_layers = len(keep)
    return model.eval()


def _inputs(vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


def test_layer_counts_fill_the_bottom_or_spread_over_the_blocks():
    assert layer_counts(3, 3, 2, "bottom") == [2, 1, 0]
    assert layer_counts(3, 3, 2, "spread") == [1, 1, 1]
    assert layer_counts(5, 3, 2, "spread") == [2, 2, 1]
    assert layer_counts(6, 4, 3, "spread") == [2, 2, 1, 1]
    with pytest.raises(ValueError, match="1..6"):
        layer_counts(7, 3, 2, "bottom")
    with pytest.raises(ValueError, match="mode"):
        layer_counts(2, 3, 2, "top")


def test_layerdrop_baselines_keep_the_named_teacher_layers(tiny_space):
    baselines = {b.name: b for b in layerdrop_baselines(tiny_space)}
    # 4 teacher layers in 2 blocks of 2: bottom 1..3, spread 2 (layers 0 and 2); spread 1 and 3 equal bottom ones
    assert sorted(baselines) == ["layerdrop-bottom1", "layerdrop-bottom2", "layerdrop-bottom3", "layerdrop-spread2"]
    assert kept_layers(tiny_space, baselines["layerdrop-bottom3"].arch) == [0, 1, 2]
    assert kept_layers(tiny_space, baselines["layerdrop-spread2"].arch) == [0, 2]
    assert all(b.arch.widths == (32, 32) for b in baselines.values())


@pytest.mark.parametrize("name,keep", [("layerdrop-bottom1", [0]), ("layerdrop-bottom3", [0, 1, 2]),
                                       ("layerdrop-spread2", [0, 2])])
def test_raw_layerdrop_is_the_teacher_with_those_layers_and_no_adapter(tiny_space, tiny_teacher, name, keep):
    baseline = next(b for b in layerdrop_baselines(tiny_space) if b.name == name)
    teacher_supernet = SuperNet.from_teacher(tiny_space, tiny_teacher, reorder=False)
    model = build_raw(baseline, teacher_supernet=teacher_supernet, trained_supernet=None)
    expected = _dropped(tiny_teacher, keep)
    assert model.config.adapters is False
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for n, p in expected.named_parameters() if not n.startswith("pooler."))
    ids, mask = _inputs(tiny_space.teacher.vocab_size)
    with torch.no_grad():
        got = model(ids, attention_mask=mask).last_hidden_state
        want = expected(input_ids=ids, attention_mask=mask).last_hidden_state
    keep_tokens = mask.bool()
    assert (got - want)[keep_tokens].abs().max() < 1e-5


def test_a_reordered_supernet_cannot_give_an_adapter_free_layerdrop(tiny_space, tiny_teacher):
    baseline = layerdrop_baselines(tiny_space)[0]
    with pytest.raises(ValueError, match="reorder=False"):
        build_raw(baseline, teacher_supernet=SuperNet.from_teacher(tiny_space, tiny_teacher),
                  trained_supernet=None)


def test_adapter_free_model_saves_and_reloads(tiny_space, tiny_teacher, tiny_teacher_dir, tmp_path):
    baseline = next(b for b in layerdrop_baselines(tiny_space) if b.name == "layerdrop-bottom2")
    model = build_raw(baseline, teacher_supernet=SuperNet.from_teacher(tiny_space, tiny_teacher, reorder=False),
                      trained_supernet=None)
    save_hf_model(model, tmp_path / "m", tokenizer=AutoTokenizer.from_pretrained(tiny_teacher_dir))
    again = NasBertModel.from_pretrained(tmp_path / "m").eval()
    assert again.config.adapters is False
    ids, mask = _inputs(tiny_space.teacher.vocab_size)
    with torch.no_grad():
        assert torch.equal(again(ids, attention_mask=mask).last_hidden_state,
                           model(ids, attention_mask=mask).last_hidden_state)


def test_adapters_false_needs_every_block_at_the_output_width():
    from nasbert.modeling import NasBertConfig

    with pytest.raises(ValueError, match="adapters: false"):
        NasBertConfig(blocks=[{"width": 16, "ops": ["mha", "ffn"]}], hidden_size=32, head_size=8, adapters=False)


def test_uniform_baselines_have_their_layers_and_width(tiny_space, tiny_teacher):
    baselines = {b.name: b for b in uniform_baselines(tiny_space)}
    assert len(baselines) == 3 * 4 - 1  # widths 16/24/32 x 1..4 layers, less the teacher's own architecture
    assert "uniform-L4-H32" not in baselines
    b = baselines["uniform-L3-H24"]
    assert b.arch.widths == (24, 24) and b.arch.num_layers == 6  # 3 layers of MHA + FFN
    assert [len(block.layers) // 2 for block in b.arch.blocks] == [2, 1]
    supernet = SuperNet.from_teacher(tiny_space, tiny_teacher).eval()
    model = build_raw(b, teacher_supernet=None, trained_supernet=supernet)
    assert model.config.adapters is True
    assert sum(p.numel() for p in model.parameters()) == tiny_space.num_params(b.arch)
    ids, mask = _inputs(tiny_space.teacher.vocab_size)
    with torch.no_grad():
        diff = model(ids, attention_mask=mask).last_hidden_state - supernet(ids, mask, arch=b.arch)
    assert diff[mask.bool()].abs().max() < 1e-5


def test_choose_baselines_takes_the_slowest_that_meets_each_budget(tiny_space):
    candidates = [*layerdrop_baselines(tiny_space, ["bottom"]), *uniform_baselines(tiny_space)[:3]]
    latency = {"layerdrop-bottom1": 2.0, "layerdrop-bottom2": 4.0, "layerdrop-bottom3": 6.0,
               "uniform-L1-H16": 1.0, "uniform-L2-H16": 2.4, "uniform-L3-H16": 3.6}
    chosen = choose_baselines(candidates, latency, 8.0, parse_budgets(["2x", "3x", "10x"]), tiny_space)
    assert chosen["2x"]["layerdrop"].name == "layerdrop-bottom2" and chosen["2x"]["uniform"].name == "uniform-L3-H16"
    assert chosen["3x"]["layerdrop"].name == "layerdrop-bottom1" and chosen["3x"]["uniform"].name == "uniform-L2-H16"
    assert chosen["10x"] == {}
    # two layer-dropped teachers with as many layers: bottom (listed first) even when spread measures slower
    candidates = layerdrop_baselines(tiny_space)
    latency = {"layerdrop-bottom1": 2.0, "layerdrop-bottom2": 4.0, "layerdrop-bottom3": 6.0, "layerdrop-spread2": 4.1}
    chosen = choose_baselines(candidates, latency, 8.0, parse_budgets(["1.9x"]), tiny_space)
    assert chosen["1.9x"]["layerdrop"].name == "layerdrop-bottom2"
    # a baseline within 3% of a speed-up budget serves it (bottom 2 at 1.96x serves 2x), not one 4% short
    latency = {"layerdrop-bottom1": 2.0, "layerdrop-bottom2": 8.0 / 1.96, "layerdrop-bottom3": 6.0,
               "layerdrop-spread2": 8.0 / 1.92}
    assert choose_baselines(candidates, latency, 8.0, parse_budgets(["2x"]), tiny_space)["2x"]["layerdrop"].name \
        == "layerdrop-bottom2"
    assert choose_baselines(candidates, latency, 8.0, parse_budgets(["2x"]), tiny_space,
                            tolerance=0.0)["2x"]["layerdrop"].name == "layerdrop-bottom1"
    assert serves(parse_budgets(["2x"])[0], 8.0 / 1.96, 10, 8.0) and not serves(parse_budgets(["2x"])[0], 8.0 / 1.92,
                                                                                  10, 8.0)
    assert not serves(parse_budgets(["10k"])[0], 0.0, 10_100, 8.0)  # a parameter budget has no tolerance


def test_measured_latency_orders_the_layerdrop_baselines(tmp_path):
    """Timed for real: keeping 1 layer of a 4-layer BERT runs well under half the time of keeping 3."""
    from nasbert.latency.models import measure_models

    space = SearchSpace.from_dict({
        "name": "timing", "teacher": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                                      "intermediate_size": 1024, "vocab_size": 512, "max_position_embeddings": 128,
                                      "type_vocab_size": 2},
        "num_blocks": 2, "hidden_choices": [128, 256], "ops": ["mha", "ffn", "identity"], "head_size": 64,
        "ffn_ratio": 4})
    torch.manual_seed(0)
    t = space.teacher
    teacher = BertModel(BertConfig(vocab_size=t.vocab_size, hidden_size=256, num_hidden_layers=4,
                                   num_attention_heads=4, intermediate_size=1024, max_position_embeddings=128,
                                   attn_implementation="eager")).eval()
    teacher_supernet = SuperNet.from_teacher(space, teacher, reorder=False)
    models = {b.name: build_raw(b, teacher_supernet=teacher_supernet, trained_supernet=None)
              for b in layerdrop_baselines(space, ["bottom"])}
    measured = measure_models(models, teacher, engine="onnxruntime", device="cpu", threads=1, batch=1,
                              seq_len=128, vocab_size=t.vocab_size, repeats=20, rounds=5)
    ms = measured.latency_ms
    # Interleaved medians; on an idle machine 3 layers take about 2.7x one layer's time. Only orders far apart
    # (1 vs 3 vs 4 layers) with a wide margin are asserted, so that a busy machine passes too.
    assert ms["layerdrop-bottom3"] / ms["layerdrop-bottom1"] > 1.2
    assert measured.teacher_latency_ms / ms["layerdrop-bottom1"] > 1.5


def test_distilled_layerdrop_stays_a_plain_bert(tiny_space, tiny_teacher, tiny_teacher_dir):
    from nasbert.data import TokenizedCorpus
    from nasbert.training.distill import DistillConfig, distill_arch

    g = torch.Generator().manual_seed(0)
    rows = torch.randint(5, tiny_space.teacher.vocab_size, (24, 16), generator=g)
    corpus = TokenizedCorpus(train=rows[:16], valid=rows[16:], fingerprint="test")
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    baseline = next(b for b in layerdrop_baselines(tiny_space) if b.name == "layerdrop-bottom2")
    supernet = SuperNet.from_teacher(tiny_space, tiny_teacher, reorder=False)
    raw = build_raw(baseline, teacher_supernet=supernet, trained_supernet=None)
    result = distill_arch(supernet, baseline.arch, tiny_teacher, corpus, tokenizer, progress=False,
                          config=DistillConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, eval_batches=1),
                          freeze_adapters=True)
    assert result.model.config.adapters is False
    assert result.valid_loss_after < result.valid_loss_before
    changed = [n for n, p in result.model.state_dict().items() if not torch.equal(p, raw.state_dict()[n])]
    assert changed and all(n.startswith(("encoder.layer.", "embeddings.")) for n in changed)


def test_sick_reads_train_and_test_from_one_file(tmp_path):
    header = ("pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tentailment_AB\tentailment_BA\t"
              "sentence_A_original\tsentence_B_original\tsentence_A_dataset\tsentence_B_dataset\tSemEval_set\r\n")
    rows = [("a dog runs", "a dog is running", "ENTAILMENT", "TRAIN"), ("a cat", "no cat", "CONTRADICTION", "TRAIN"),
            ("x", "y", "NEUTRAL", "TRIAL"), ("a man", "a woman", "NEUTRAL", "TEST")]
    lines = "".join(f"{i}\t{a}\t{b}\t{label}\t3.0\tx\tx\tx\tx\tx\tx\t{split}\r\n"
                    for i, (a, b, label, split) in enumerate(rows))
    (tmp_path / "sick").mkdir()
    (tmp_path / "sick" / "SICK.txt").write_text(header + lines, newline="")
    data = load_task("sick", data_dir=tmp_path)
    assert [(e.text_a, e.text_b, e.label) for e in data.train] == [("a dog runs", "a dog is running", 0),
                                                                   ("a cat", "no cat", 2)]
    assert [(e.text_a, e.label) for e in data.dev] == [("a man", 1)]
    assert data.task.num_labels == 3 and data.task.main_metric == "accuracy"
    with pytest.raises(TaskError, match="SICK.txt"):
        load_task("sick", data_dir=tmp_path / "sick" / "missing")
    (tmp_path / "bad.txt").write_text(header + "1\ta\tb\tMAYBE\t3\tx\tx\tx\tx\tx\tx\tTRAIN\r\n")
    with pytest.raises(TaskError, match="MAYBE"):
        load_task("sick", data_dir=tmp_path / "bad.txt")


def _sick_file(root: Path, n_train: int, n_test: int) -> Path:
    """A SICK-layout file: "ENTAILMENT" when both texts hold the word "value" or neither does, else "NEUTRAL"."""
    header = ("pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tentailment_AB\t"
              "entailment_BA\tsentence_A_original\tsentence_B_original\tsentence_A_dataset\tsentence_B_dataset\t"
              "SemEval_set\r\n")
    rng = np.random.default_rng(0)
    words = ["the", "a", "of", "list", "type", "module", "name", "class"]
    lines = []
    for i in range(n_train + n_test):
        texts = []
        for has in (rng.random() < 0.5, rng.random() < 0.5):
            text = list(rng.choice(words, size=5))
            if has:
                text[int(rng.integers(0, 5))] = "value"
            texts.append((" ".join(text), has))
        label = "ENTAILMENT" if texts[0][1] == texts[1][1] else "NEUTRAL"
        split = "TRAIN" if i < n_train else "TEST"
        lines.append(f"{i}\t{texts[0][0]}\t{texts[1][0]}\t{label}\t3.0\tx\tx\tx\tx\tx\tx\t{split}\r\n")
    (root / "sick").mkdir(parents=True)
    (root / "sick" / "SICK.txt").write_text(header + "".join(lines), newline="")
    return root


def test_report_grid_spans_both_pair_encodings_on_pair_tasks_only(tiny_space, tiny_teacher, tiny_teacher_dir,
                                                                  glue_dir, tmp_path):
    from nasbert.config import ConfigError
    from nasbert.quality.report import ReportConfig, _finetune_all

    out = tmp_path / "report"
    supernet = SuperNet.from_teacher(tiny_space, tiny_teacher)
    save_hf_model(supernet.extract(tiny_space.sample(np.random.default_rng(3))), out / "models" / "m",
                  tokenizer=AutoTokenizer.from_pretrained(tiny_teacher_dir))
    tasks = {"sick": load_task("sick", data_dir=_sick_file(tmp_path / "data", 48, 16)),
             "sst2": load_task("sst2", data_dir=glue_dir)}
    config = ReportConfig(tasks=("sick", "sst2"), seeds=2, lrs=(1e-3, 3e-3), epochs=1, batch_size=16,
                          max_seq_len=16, max_train_examples={"sst2": 32})
    assert config.pair_encodings == ("cross", "bi")  # the default
    results = _finetune_all(out, ["m"], tasks, config, progress=False)["m"]
    sick, sst2 = results["sick"], results["sst2"]
    assert set(sick["grid"]) == {"0.001", "0.003", "0.001-bi", "0.003-bi"}
    assert set(sst2["grid"]) == {"0.001", "0.003"} and sst2["pair_encoding"] == "cross"  # one text: cross only
    means = {k: np.mean(v) for k, v in sick["grid"].items()}
    best = max(means.values())
    chosen = f"{sick['lr']:g}" + ("-bi" if sick["pair_encoding"] == "bi" else "")
    assert means[chosen] == best and sick["scores"] == sick["grid"][chosen]
    for point in sick["grid"]:
        lr, _, encoding = point.partition("-")
        job = out / "ft" / "m" / "sick" / f"lr{point}-seed1"
        recorded = json.loads((job / "finetune.json").read_text())["config"]
        assert recorded["pair_encoding"] == (encoding or "cross") and recorded["lr"] == float(lr)
        metrics = json.loads((job / "metrics.json").read_text())
        assert 100 * metrics["dev"]["accuracy"] == pytest.approx(sick["grid"][point][1])
    for bad in [("bi", "bi"), ("none",), ()]:
        with pytest.raises(ConfigError, match="--pair-encodings"):
            ReportConfig(pair_encodings=bad)


def test_proxy_correlation_is_kendalls_tau_of_each_proxy_against_the_panel():
    """Hand-counted: concordant minus discordant pairs over sqrt(untied pairs of each side); losses negated."""
    rows = [{"name": "A", "budget": "1.5x", "panel_mean": 80.0}, {"name": "B", "budget": "1.5x", "panel_mean": 70.0},
            {"name": "C", "budget": "2x", "panel_mean": 60.0}, {"name": "D", "budget": "2x", "panel_mean": 50.0},
            {"name": "A", "budget": "2x", "panel_mean": 80.0}, {"name": "E", "budget": None, "panel_mean": 65.0}]
    proxies = {name: dict(zip(("valid_loss", "block_proxy", "cosine", "params", "flops"), values))
               for name, values in {"A": (0.1, 1.0, 0.9, 400, 4000), "B": (0.3, None, 0.7, 300, 1000),
                                    "C": (0.2, 3.0, 0.8, 200, 3000), "D": (0.4, 2.0, 0.6, 100, 2000),
                                    "E": (0.5, 4.0, 0.5, 100, 5000)}.items()}
    corr = proxy_correlation(rows, proxies)
    # all five models once (A is in two budgets): by -loss A C B D E vs panel A B E C D: 7 pairs agree, 3 do not;
    # B has no block proxy: 3 agree, 3 do not; params tie D and E: 8 agree, 1 does not, over 9 x 10 untied pairs;
    # the cosine (higher is better) orders them as -loss does
    assert corr["all"] == {"n": 5, "valid_loss": pytest.approx(0.4), "n_valid_loss": 5, "block_proxy": 0.0,
                           "n_block_proxy": 4, "cosine": pytest.approx(0.4), "n_cosine": 5,
                           "params": pytest.approx(7 / np.sqrt(90)), "n_params": 5,
                           "flops": pytest.approx(0.2), "n_flops": 5}
    assert list(corr["by_budget"]) == ["1.5x", "2x"]  # a model with no budget is in no budget's group
    assert corr["by_budget"]["1.5x"] == {"n": 2, "valid_loss": None, "n_valid_loss": 2, "block_proxy": None,
                                         "n_block_proxy": 1, "cosine": None, "n_cosine": 2, "params": None,
                                         "n_params": 2, "flops": None,
                                         "n_flops": 2}  # fewer than 3 models: no tau
    assert corr["by_budget"]["2x"] == {"n": 3, "valid_loss": 1.0, "n_valid_loss": 3,
                                       "block_proxy": pytest.approx(1 / 3), "n_block_proxy": 3, "cosine": 1.0,
                                       "n_cosine": 3, "params": 1.0,
                                       "n_params": 3, "flops": 1.0, "n_flops": 3}


# ------------------------------------------------------------------------------------------------ the report

WORDS = ["the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "this", "object", "class"]


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    for split, n, seed in (("train", 48, 0), ("dev", 24, 1)):
        rng = np.random.default_rng(seed)
        rows = []
        for i in range(n):
            words = list(rng.choice(WORDS, size=5))
            if i % 2:
                words[int(rng.integers(0, 5))] = "value"
            rows.append(f"{' '.join(words)}\t{i % 2}\n")
        (root / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    return root


@pytest.fixture(scope="module")
def run(tiny_run_template, tmp_path_factory) -> Path:
    return copy_run(tiny_run_template, tmp_path_factory.mktemp("quality"))


REPORT = ["--tasks", "sst2", "--seeds", "2", "--lrs", "1e-3", "3e-3", "--epochs", "2", "sst2=1",
          "--batch-size", "16", "--max-seq-len", "16", "--layerdrop", "bottom", "--sampled", "2", "--threads", "1",
          "--no-progress"]


def _report(run: Path, out: Path, glue_dir, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NASBERT_CACHE": str(run.parent / "cache")}
    return subprocess.run(_nasbert() + ["report", str(run), "--out", str(out), "--data-dir", str(glue_dir), *REPORT,
                                        *extra], check=False, capture_output=True, text=True, env=env, timeout=600)


def _summary_row(budget, kind, name, panel, spread=0.5):
    return {"budget": budget, "kind": kind, "name": name, "arch": "8:mha,ffn|8:identity,identity",
            "distill_steps": 0, "params": 1000, "latency_ms": 1.0, "speedup": 2.0,
            "scores": {"sst2": [panel - spread, panel + spread]}, "lr": {"sst2": 2e-4},
            "pair_encoding": {"sst2": "cross"}, "panel_mean": panel, "panel_spread": spread,
            "pct_of_teacher": {"sst2": 90.0}, "panel_pct_of_teacher": 90.0, "proxies": None}


def test_every_row_kind_is_tabled_and_plotted_and_each_member_is_led_against_its_budgets_best_free_row(tmp_path):
    rows = [_summary_row("2x", "searched", "m2", 80.0), _summary_row("2x", "rule", "rule-2x", 81.0),
            _summary_row("2x", "layerdrop", "bottom3", 76.0), _summary_row("2x", "pruned", "pruned-m2", 77.5),
            _summary_row("2x", "uniform", "uniform-L2", 70.0), _summary_row("3x", "searched", "m3", 70.0, 1.5),
            _summary_row("3x", "layerdrop", "bottom2", 71.0, 0.2), _summary_row(None, "sampled", "s0", 60.0),
            _summary_row("4x", "searched", "m4", 65.0), _summary_row("4x", "rule", "m4", 65.0)]  # one model
    assert {r["kind"] for r in rows} | {"teacher"} == set(ROW_KINDS)
    found = leads(rows)
    assert [(x["name"], x["free"] and x["free"]["name"], x["rule"] and x["rule"]["name"]) for x in found] == [
        ("m2", "pruned-m2", "rule-2x"), ("m3", "bottom2", None), ("m4", None, "m4")]
    assert found[0]["free"]["lead"] == pytest.approx(2.5) and found[0]["rule"]["lead"] == pytest.approx(-1.0)
    assert found[1]["free"]["lead"] == pytest.approx(-1.0) and found[1]["free"]["spread"] == 1.5
    results = {"teacher": {"sst2": [90.0, 91.0]}, "teacher_lr": {"sst2": 2e-4}, "teacher_panel_mean": 90.5,
               "teacher_panel_spread": 0.7, "teacher_latency_ms": 2.0, "teacher_params": 2000, "tasks": ["sst2"],
               "device": {"key": "cpu"}, "leads": found, "rows": rows,
               "config": {"seeds": 2, "lrs": [2e-4], "lr_select": "all", "pair_encodings": ["cross"]}}
    md = markdown_table(results)
    assert all(f"| {kind} |" in md for kind in ROW_KINDS)
    assert "| 2x | m2 | 80.00 | pruned-m2 (pruned) | 77.50 | +2.50 (0.50) | 81.00 | -1.00 (0.50) |" in md
    assert "| 3x | m3 | 70.00 | bottom2 (layerdrop) | 71.00 | -1.00 (1.50) | - | - |" in md
    assert "| 4x | m4 | 65.00 | - | - | - | the member | same model |" in md
    plot(results, tmp_path / "quality.png")
    assert (tmp_path / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_compares_family_baselines_and_teacher_and_resumes(run, glue_dir, tmp_path):
    out = tmp_path / "report"
    done = _report(run, out, glue_dir)
    assert done.returncode == 0, done.stderr[-4000:]
    for bar in ("Loading weights", "Writing model shards"):  # --no-progress silences transformers' bars too
        assert bar not in done.stderr
    results = json.loads((out / "quality_results.json").read_text())
    models = json.loads((out / "models.json").read_text())
    family = json.loads((run / "family" / "family.json").read_text())
    budgets = list(dict.fromkeys(m["budget"] for m in family["models"]))
    assert len(results["teacher"]["sst2"]) == 2
    for row in results["rows"]:
        assert row["budget"] in budgets if row["kind"] != "sampled" else row["budget"] is None
        assert row["kind"] in ("searched", "layerdrop", "uniform", "sampled")
        assert len(row["scores"]["sst2"]) == 2 and row["lr"]["sst2"] in (1e-3, 3e-3)
        assert row["speedup"] == pytest.approx(results["teacher_latency_ms"] / row["latency_ms"])
        if row["kind"] in ("layerdrop", "uniform"):  # a baseline serves its budget on the latency measured first
            timed = json.loads((out / "candidates.json").read_text())
            cand = next(c for c in timed["candidates"] if c["name"] == row["name"])
            assert serves(parse_budgets([row["budget"]])[0], cand["latency_ms"], cand["params"],
                          timed["teacher_latency_ms"])
            assert models["serves_tolerance"] == 0.03
    for budget in budgets:
        kinds = {r["kind"] for r in results["rows"] if r["budget"] == budget}
        assert "searched" in kinds
    # a candidate timed within 10% of a budget's limit was timed again (its first speed-up kept), no other one
    timed = json.loads((out / "candidates.json").read_text())
    limits = [b.value for b in parse_budgets(budgets) if b.kind == "speedup"]
    assert limits
    for cand in timed["candidates"]:
        first = cand.get("first_speedup", cand["speedup"])
        assert ("first_speedup" in cand) == any(abs(s / first - 1) <= 0.10 for s in limits), cand
    sampled = [r for r in results["rows"] if r["kind"] == "sampled"]
    assert len(sampled) == 2 and all(r["budget"] is None for r in sampled)
    assert len({r["arch"] for r in sampled}) == 2 and sampled[0]["latency_ms"] != sampled[1]["latency_ms"]
    # the proxies: the teacher's nasbert form is the teacher (zero loss); every row here is an undistilled path
    proxies = json.loads((out / "proxies.json").read_text())
    assert proxies["teacher"]["valid_loss"] < 1e-9 and proxies["teacher"]["block_proxy"] < 1e-9
    assert all(r["proxies"]["block_proxy"] > 0 and r["proxies"]["valid_loss"] > 0 for r in results["rows"])
    assert proxies["teacher"]["cosine"] == pytest.approx(1.0) and all(r["proxies"]["cosine"] < 1 - 1e-6
                                                                      for r in results["rows"])
    corr = results["proxy_correlation"]
    assert corr["all"]["n"] == len({r["name"] for r in results["rows"]}) == len(os.listdir(out / "models")) - 1
    assert corr == proxy_correlation(results["rows"], proxies)  # over the report's own rows and proxies
    assert set(corr["by_budget"]) == set(budgets)
    # every model is a directory that fine-tunes, and each score is the run's own metrics.json
    row = results["rows"][0]
    lr = row["lr"]["sst2"]
    scores = [100 * json.loads((out / "ft" / row["name"] / "sst2" / f"lr{lr:g}-seed{s}" / "metrics.json")
                               .read_text())["dev"]["accuracy"] for s in (0, 1)]
    assert row["scores"]["sst2"] == pytest.approx(scores)
    teacher_model = NasBertModel.from_pretrained(out / "models" / "teacher")
    assert teacher_model.config.adapters is False and len(teacher_model.encoder.layer) == 8  # 4 x (mha, ffn)
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "quality.md").read_text()
    assert "| teacher |" in md
    # the models whose chosen rate is the grid's largest are named, and only they: a larger one may be better
    at_top = [name for name, lrs in [("teacher", results["teacher_lr"]),
                                     *((r["name"], r["lr"]) for r in results["rows"])] if lrs["sst2"] == 3e-3]
    named = md.split("was the best for ")[1].split(": a larger")[0].split("; ") if at_top else []
    assert ("The grid's largest rate (0.003)" in md) == bool(at_top)
    assert named == [f"{name} (sst2)" for name in dict.fromkeys(at_top)]
    assert {r["name"] for r in models["rows"]} == set(os.listdir(out / "models"))
    # --epochs 2 sst2=1: sst2 trains one epoch, and each run is evaluated once, after its last step
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["epochs"] == 2.0 and report["config"]["task_epochs"] == {"sst2": 1.0}
    job_metrics = json.loads((out / "ft" / row["name"] / "sst2" / f"lr{lr:g}-seed0" / "metrics.json").read_text())
    assert job_metrics["epochs"] == 1.0 and len(job_metrics["history"]) == 1
    # each member against the best free baseline of its budget, which serves it, and the lead is their difference
    searched = [r["name"] for r in results["rows"] if r["kind"] == "searched"]
    assert [lead["name"] for lead in results["leads"]] == searched
    for lead in results["leads"]:
        free = [r for r in results["rows"] if r["budget"] == lead["budget"] and r["kind"] in ("layerdrop", "uniform")]
        if free:
            best = max(free, key=lambda r: r["panel_mean"])
            assert lead["free"]["name"] == best["name"]
            assert lead["free"]["lead"] == pytest.approx(lead["panel_mean"] - best["panel_mean"])
        else:
            assert lead["free"] is None
    assert "best free baseline" in md and "| layers |" in md

    # resume: one fine-tuning run lost and the summary gone -> only that run is done again, same numbers
    job = out / "ft" / row["name"] / "sst2" / f"lr{lr:g}-seed1"
    other = out / "ft" / row["name"] / "sst2" / f"lr{lr:g}-seed0" / "metrics.json"
    stamp = other.stat().st_mtime_ns
    import shutil

    shutil.rmtree(job)
    (out / "quality_results.json").unlink()
    again = _report(run, out, glue_dir)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((out / "quality_results.json").read_text())["rows"] == results["rows"]
    assert other.stat().st_mtime_ns == stamp

    # the same --out with other settings is refused, nothing is touched
    refused = _report(run, out, glue_dir, "--seeds", "3")
    assert refused.returncode == 1 and "other settings" in refused.stderr and "config" in refused.stderr
    assert json.loads((out / "report.json").read_text())["config"]["seeds"] == 2


@pytest.mark.parametrize("extra,message", [
    (["--tasks", "imdb", "--epochs", "1"], "unknown task 'imdb'"),
    (["--max-train-examples", "cola=10"], "not in --tasks"),
    (["--epochs", "cola=2"], "--epochs names 'cola'"),
    (["--epochs", "sst2=two"], "--epochs takes N or TASK=N"),
    (["--budgets", "9x"], "no member for budget 9x"),
    (["--lrs", "0"], "learning rates"),
    (["--pair-encodings", "bi", "bi"], "--pair-encodings"),
])
def test_report_refuses_bad_input_and_writes_nothing(run, glue_dir, tmp_path, extra, message, capsys):
    out = tmp_path / "report"
    code, stderr = _report_in_process(run, out, glue_dir, *extra, capsys=capsys)
    assert code == 1 and message in stderr, stderr[-2000:]
    assert not out.exists()


def test_report_on_a_directory_that_is_not_a_run(tmp_path, glue_dir, capsys):
    code, stderr = _report_in_process(tmp_path, tmp_path / "report", glue_dir, capsys=capsys)
    assert code == 1 and "not a run directory" in stderr


def _report_in_process(run: Path, out: Path, glue_dir, *extra: str, capsys) -> tuple[int, str]:
    """``nasbert report`` as the console script runs it (``nasbert.cli.main``), in this process: for refusals,
    which come before any work (the end-to-end test above runs the real command)."""
    from nasbert.cli import main

    capsys.readouterr()
    code = main(["report", str(run), "--out", str(out), "--data-dir", str(glue_dir), *REPORT, *extra])
    return code, capsys.readouterr().err


def test_baselines_command_writes_and_times_every_chosen_model(run, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NASBERT_CACHE": str(run.parent / "cache")}
    out = tmp_path / "baselines"
    done = subprocess.run(_nasbert() + ["baselines", str(run), "--out", str(out), "--layerdrop", "bottom",
                                        "--no-progress"], check=False, capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    models = json.loads((out / "models.json").read_text())
    assert models["rows"][0]["kind"] == "teacher" and models["teacher_latency_ms"] > 0
    for row in models["rows"]:
        assert (out / row["path"] / "config.json").is_file() and row["latency_ms"] > 0
        if row["kind"] != "teacher":
            assert row["name"] in done.stdout
    assert {r["kind"] for r in models["rows"]} <= {"teacher", "searched", "layerdrop", "uniform"}
    assert set(models["baselines"]) == {r["budget"] for r in models["rows"] if r["budget"]}
