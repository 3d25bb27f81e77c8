"""Downstream task data (GLUE TSV layout, the hub, generic CSV / JSON Lines) and the GLUE metrics."""

from __future__ import annotations

import doctest
import json
import logging
import math

import numpy as np
import pytest

import nasbert.finetune.metrics
import nasbert.finetune.tasks
from nasbert.finetune import (
    GLUE_TASKS,
    Example,
    TaskError,
    accuracy,
    compute_metrics,
    f1_score,
    get_task,
    load_generic_task,
    load_task,
    matthews_corrcoef,
    pearson,
    spearmanr,
)

# One tiny copy of every GLUE task, as the GLUE download script lays them out. Headers are the real ones
# (MNLI's cut down, its columns kept in their real order), so that columns are found by name.
GLUE_FILES = {
    "SST-2/train.tsv": "sentence\tlabel\nit 's a charming journey \t1\n\"dull\" and flat\t0\nfine , fine\t1\n",
    "SST-2/dev.tsv": "sentence\tlabel\nunflinchingly bleak \t0\n",
    # CoLA: no header, source / label / annotation / sentence; the dev file's last line has no newline.
    "CoLA/train.tsv": "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThe more we study verbs.\n",
    "CoLA/dev.tsv": "gj04\t1\t\tThe sailors rode the breeze.\ncj99\t0\t*\tAs you eat the most.",
    # MRPC, with a byte-order mark before the header.
    "MRPC/train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                      "1\t702876\t702977\tAmrozi accused his brother.\tReferring to him, Amrozi accused his brother.\n"
                      "0\t2108705\t2108831\tYucaipa owned Dominick's.\tYucaipa bought Dominick's in 1995.\n",
    "MRPC/dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said.\tHe stated.\n",
    "STS-B/train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                       "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\t"
                       "An air plane is taking off.\t5.000\n"
                       "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays a flute.\t"
                       "A man is eating.\t0.500\n",
    "STS-B/dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                     "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hat.\t"
                     "A man wears a hat.\t3.8\n",
    # QQP: the second row has missing fields, like a few rows of the real train.tsv.
    "QQP/train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                     "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of math is it?\t0\n"
                     "\tWas Muhammad a real historical figure?\t0\n"
                     "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control it?\t1\n",
    "QQP/dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tWhy?\tWhy not?\t0\n",
    "MNLI/train.tsv": "index\tpromptID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
                      "0\t31193\tgovernment\tConceptually cream skimming has two dimensions.\t"
                      "Product and geography are what make it work.\tneutral\tneutral\n"
                      "1\t101457\ttelephone\tyou know during the season\tYou lose the things.\tentailment\tentailment\n"
                      "2\t134793\tfiction\tOne of our number will carry out your instructions.\t"
                      "A member of my team will not.\tcontradiction\tcontradiction\n",
    "MNLI/dev_matched.tsv": "index\tpromptID\tgenre\tsentence1\tsentence2\tlabel1\tlabel2\tgold_label\n"
                            "0\t63735\tslate\tThe new rights are nice enough\tEveryone really likes them.\t"
                            "neutral\tentailment\tneutral\n",
    "QNLI/train.tsv": "index\tquestion\tsentence\tlabel\n"
                      "0\tWhen did it open?\tIt opened in 1910.\tentailment\n"
                      "1\tWho built it?\tIt is tall.\tnot_entailment\n",
    "QNLI/dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWhat came into force?\tThe constitution did.\tentailment\n",
    "RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n"
                     "0\tNo weapons were found in Iraq.\tWeapons were found in Iraq.\tnot_entailment\n"
                     "1\tA place of sorrow.\tPope was buried.\tentailment\n",
    "RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tDana is in Paris.\tDana is in France.\tentailment\n",
}

# (task, train size, first training example, dev labels)
EXPECTED = [
    ("sst2", 3, Example("it 's a charming journey", None, 1), [0]),
    ("cola", 2, Example("Our friends won't buy this analysis.", None, 1), [1, 0]),
    ("mrpc", 2, Example("Amrozi accused his brother.", "Referring to him, Amrozi accused his brother.", 1), [1]),
    ("stsb", 2, Example("A plane is taking off.", "An air plane is taking off.", 5.0), [3.8]),
    ("qqp", 2, Example("How is the life of a math student?", "Which level of math is it?", 0), [0]),
    ("mnli", 3, Example("Conceptually cream skimming has two dimensions.",
                        "Product and geography are what make it work.", 1), [1]),
    ("qnli", 2, Example("When did it open?", "It opened in 1910.", 0), [0]),
    ("rte", 2, Example("No weapons were found in Iraq.", "Weapons were found in Iraq.", 1), [0]),
]


def _write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def glue_dir(tmp_path):
    return _write(tmp_path / "glue", GLUE_FILES)


# ------------------------------------------------------------------------------------------------ task names


@pytest.mark.parametrize("name,expected", [("SST-2", "sst2"), ("sst2", "sst2"), ("sst-2", "sst2"),
                                           ("CoLA", "cola"), ("STS-B", "stsb"), ("MNLI", "mnli"), ("qqp", "qqp")])
def test_get_task_accepts_glue_spellings(name, expected):
    assert get_task(name) is GLUE_TASKS[expected]


def test_get_task_unknown_lists_the_tasks():
    with pytest.raises(TaskError, match=r"unknown task 'imdb'.*cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte"):
        get_task("imdb")


def test_glue_specs_match_the_hub_dataset():
    assert sorted(GLUE_TASKS) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"]
    mnli = GLUE_TASKS["mnli"]
    assert (mnli.text_fields, mnli.label_names, mnli.dev_split) == (
        ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "validation_matched")
    stsb = GLUE_TASKS["stsb"]
    assert stsb.is_regression and stsb.label_names == () and stsb.main_metric == "pearson"
    assert GLUE_TASKS["cola"].metrics == ("matthews_correlation",)
    assert GLUE_TASKS["mrpc"].metrics == ("f1", "accuracy") and GLUE_TASKS["mrpc"].main_metric == "f1"
    for spec in GLUE_TASKS.values():
        assert spec.main_metric in spec.metrics
        assert spec.num_labels == (1 if spec.is_regression else len(spec.label_names))


def test_docstring_examples_run():
    for module in (nasbert.finetune.tasks, nasbert.finetune.metrics):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# ----------------------------------------------------------------------------------------------- GLUE TSV files


@pytest.mark.parametrize("task,n_train,first,dev_labels", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_load_every_glue_format(glue_dir, task, n_train, first, dev_labels):
    data = load_task(task, data_dir=glue_dir)
    assert data.task is GLUE_TASKS[task]
    assert len(data.train) == n_train
    assert data.train[0] == first
    assert [e.label for e in data.dev] == dev_labels
    assert data.source == str(glue_dir / GLUE_TASKS[task].glue_dir)
    for example in data.train + data.dev:
        assert example.text_a == example.text_a.strip() and example.text_a
        assert (example.text_b is None) == (len(data.task.text_fields) == 1)
        assert isinstance(example.label, float if data.task.is_regression else int)


def test_glue_labels_and_texts(glue_dir):
    assert [e.label for e in load_task("mnli", data_dir=glue_dir).train] == [1, 0, 2]
    assert [e.label for e in load_task("qnli", data_dir=glue_dir).train] == [0, 1]
    assert [e.label for e in load_task("stsb", data_dir=glue_dir).train] == [5.0, 0.5]
    sst2 = load_task("sst2", data_dir=glue_dir)
    assert [e.text_a for e in sst2.train] == ["it 's a charming journey", '"dull" and flat', "fine , fine"]
    assert sst2.dev == [Example("unflinchingly bleak", None, 0)]
    cola = load_task("CoLA", data_dir=glue_dir)
    assert cola.dev[-1] == Example("As you eat the most.", None, 0)  # the last line, with no newline


def test_qqp_skips_malformed_rows_and_logs_them(glue_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="nasbert.finetune.tasks"):
        data = load_task("qqp", data_dir=glue_dir)
    assert [e.label for e in data.train] == [0, 1]
    assert "skipped 1 rows with missing or extra fields" in caplog.text


def test_glue_rows_with_empty_text_are_skipped(glue_dir, caplog):
    path = glue_dir / "SST-2" / "train.tsv"
    path.write_text("sentence\tlabel\na film\t1\n   \t0\nanother film\t0\n")
    with caplog.at_level(logging.WARNING, logger="nasbert.finetune.tasks"):
        data = load_task("sst2", data_dir=glue_dir)
    assert [e.text_a for e in data.train] == ["a film", "another film"]
    assert "skipped 1 rows with an empty text" in caplog.text


def test_data_dir_may_be_the_task_directory_or_another_spelling(glue_dir, tmp_path):
    data = load_task("rte", data_dir=glue_dir / "RTE")
    assert len(data.train) == 2 and data.source == str(glue_dir / "RTE")
    other = tmp_path / "other"
    other.mkdir()
    (glue_dir / "SST-2").rename(other / "sst2")
    assert len(load_task("SST-2", data_dir=other).train) == 3


def test_columns_are_found_by_header_name(glue_dir):
    (glue_dir / "RTE" / "dev.tsv").write_text("label\tsentence2\tindex\tsentence1\nentailment\tB.\t0\tA.\n")
    assert load_task("rte", data_dir=glue_dir).dev == [Example("A.", "B.", 0)]


def test_missing_train_file_explains_the_layout(tmp_path):
    with pytest.raises(TaskError) as error:
        load_task("cola", data_dir=tmp_path)
    message = str(error.value)
    assert repr(str(tmp_path / "CoLA" / "train.tsv")) in message
    assert "<DIR>/<TASK>/train.tsv, dev.tsv" in message and "CoLA's files have no header" in message
    assert "omit --data-dir" in message


def test_missing_dev_file_names_it(glue_dir):
    (glue_dir / "MNLI" / "dev_matched.tsv").rename(glue_dir / "MNLI" / "dev.tsv")
    with pytest.raises(TaskError, match=r"no dev file for mnli: expected '.*MNLI/dev_matched\.tsv'"):
        load_task("mnli", data_dir=glue_dir)


def test_missing_data_dir(tmp_path):
    with pytest.raises(TaskError, match=r"--data-dir '.*nowhere' is not a directory"):
        load_task("sst2", data_dir=tmp_path / "nowhere")


def test_bad_label_names_file_line_and_value(glue_dir):
    (glue_dir / "RTE" / "train.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tC.\tD.\tcontradiction\n")
    with pytest.raises(TaskError) as error:
        load_task("rte", data_dir=glue_dir)
    assert str(error.value).startswith(f"{glue_dir / 'RTE' / 'train.tsv'}, line 3: label 'contradiction' is not one "
                                       "of 'entailment', 'not_entailment'")


def test_cola_with_a_header_says_cola_has_none(glue_dir):
    (glue_dir / "CoLA" / "train.tsv").write_text("source\tlabel\tannotation\tsentence\ngj04\t1\t\tFine.\n")
    with pytest.raises(TaskError, match=r"line 1: label 'label' .*CoLA files have no header"):
        load_task("cola", data_dir=glue_dir)


def test_bad_stsb_score(glue_dir):
    path = glue_dir / "STS-B" / "dev.tsv"
    path.write_text(GLUE_FILES["STS-B/dev.tsv"].replace("\t3.8\n", "\tn/a\n"))
    with pytest.raises(TaskError, match=r"dev\.tsv, line 2: score 'n/a' is not a number"):
        load_task("stsb", data_dir=glue_dir)


def test_missing_column_lists_the_header(glue_dir):
    (glue_dir / "SST-2" / "train.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(TaskError, match=r"no column 'sentence' \(its header: 'text', 'label'\)"):
        load_task("sst2", data_dir=glue_dir)


def test_wrong_field_count_is_an_error_outside_qqp(glue_dir):
    (glue_dir / "SST-2" / "train.tsv").write_text("sentence\tlabel\nfine\t1\nsplit\tby a tab\t0\n")
    with pytest.raises(TaskError, match=r"train\.tsv, line 3: 3 tab-separated fields, expected 2"):
        load_task("sst2", data_dir=glue_dir)


def test_generic_spec_is_refused_by_load_task(tmp_path):
    spec = load_generic_task(train_file=_csv(tmp_path, "t.csv", [("a", "x"), ("b", "y")]),
                             dev_file=_csv(tmp_path, "d.csv", [("c", "x")]), text_columns=["text"],
                             label_column="label").task
    with pytest.raises(TaskError, match="not a GLUE task: read its files with load_generic_task"):
        load_task(spec, data_dir=tmp_path)


# ------------------------------------------------------------------------------------------------------- hub


def test_hub_offline_says_to_pass_data_dir(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TaskError) as error:
        load_task("sst2")
    message = str(error.value)
    assert message.startswith("cannot load sst2 from the Hugging Face hub (nyu-mll/glue)")
    assert "pass --data-dir" in message and "<DIR>/<TASK>/train.tsv, dev.tsv" in message


def _fake_glue(split_rows, label_names):
    """A stand-in for load_dataset("nyu-mll/glue", ...): {split: Dataset}."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(label_names)),
                                  "idx": datasets.Value("int32")})
    return {split: datasets.Dataset.from_dict(
        {"premise": [r[0] for r in rows], "hypothesis": [r[1] for r in rows], "label": [r[2] for r in rows],
         "idx": list(range(len(rows)))}, features=features) for split, rows in split_rows.items()}


def test_hub_rows_become_examples(monkeypatch):
    fake = _fake_glue({"train": [(" A. ", "B.", 2), ("C.", "D.", 0), ("E.", "", 1)],
                       "validation_matched": [("F.", "G.", 1)], "validation_mismatched": [("H.", "I.", 0)]},
                      ["entailment", "neutral", "contradiction"])
    calls = []
    monkeypatch.setattr(nasbert.finetune.tasks, "_load_dataset", lambda *args: calls.append(args) or fake)
    data = load_task("MNLI", max_train_examples=5)
    assert calls == [("nyu-mll/glue", "mnli")]
    assert data.train == [Example("A.", "B.", 2), Example("C.", "D.", 0)]  # the empty hypothesis is skipped
    assert data.dev == [Example("F.", "G.", 1)]
    assert data.source == "hub:nyu-mll/glue/mnli"


def test_hub_label_names_must_match(monkeypatch):
    fake = _fake_glue({"train": [("A.", "B.", 0)], "validation_matched": [("C.", "D.", 1)]},
                      ["contradiction", "neutral", "entailment"])
    monkeypatch.setattr(nasbert.finetune.tasks, "_load_dataset", lambda *args: fake)
    with pytest.raises(TaskError, match=r"label names \['contradiction', 'neutral', 'entailment'\] differ"):
        load_task("mnli")


# ----------------------------------------------------------------------------------------------- subsampling


def _many_sst2(tmp_path, n=50):
    rows = "".join(f"sentence {i}\t{i % 2}\n" for i in range(n))
    return _write(tmp_path / "many", {"SST-2/train.tsv": "sentence\tlabel\n" + rows,
                                      "SST-2/dev.tsv": "sentence\tlabel\n" + rows})


def _indices(data):
    return [int(e.text_a.split()[1]) for e in data.train]


def test_subsampling_is_seeded_ordered_and_leaves_dev_whole(tmp_path):
    root = _many_sst2(tmp_path)
    first = load_task("sst2", data_dir=root, max_train_examples=10, seed=3)
    again = load_task("sst2", data_dir=root, max_train_examples=10, seed=3)
    other = load_task("sst2", data_dir=root, max_train_examples=10, seed=4)
    assert _indices(first) == _indices(again)
    assert _indices(first) != _indices(other)
    assert len(set(_indices(first))) == 10
    assert _indices(first) == sorted(_indices(first))  # the original order
    assert _indices(first) == np.sort(np.random.default_rng(3).choice(50, size=10, replace=False)).tolist()
    assert all(e.label == i % 2 for e, i in zip(first.train, _indices(first), strict=True))
    assert len(first.dev) == 50
    assert len(load_task("sst2", data_dir=root, max_train_examples=500).train) == 50


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_max_train_examples(tmp_path, bad):
    with pytest.raises(TaskError, match="max_train_examples must be a positive integer"):
        load_task("sst2", data_dir=_many_sst2(tmp_path), max_train_examples=bad)


# ------------------------------------------------------------------------------------------------ generic files


def _csv(tmp_path, name, rows, header="text,label"):
    path = tmp_path / name
    path.write_text(header + "\n" + "".join(",".join(f'"{v}"' for v in row) + "\n" for row in rows))
    return path


def _jsonl(tmp_path, name, records):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_generic_csv_with_string_labels(tmp_path):
    train = _csv(tmp_path, "train.csv", [("great, really", "pos"), ("awful", "neg"), (" meh ", "neutral"),
                                         ("superb", "pos")])
    dev = _csv(tmp_path, "dev.csv", [("bad", "neg"), ("good", "pos")])
    data = load_generic_task(train_file=train, dev_file=dev, text_columns=["text"], label_column="label",
                             name="reviews")
    spec = data.task
    assert (spec.name, spec.glue_dir, spec.text_fields) == ("reviews", "", ("text",))
    assert spec.label_names == ("neg", "neutral", "pos") and spec.num_labels == 3
    assert spec.metrics == ("accuracy",) and spec.main_metric == "accuracy"
    assert data.train == [Example("great, really", None, 2), Example("awful", None, 0), Example("meh", None, 1),
                          Example("superb", None, 2)]
    assert [e.label for e in data.dev] == [0, 2]
    assert data.source == str(train)


def test_generic_integer_labels_sort_numerically(tmp_path):
    train = _jsonl(tmp_path, "train.jsonl", [{"q": "a", "p": "b", "y": 10}, {"q": "c", "p": "d", "y": 2},
                                             {"q": "e", "p": "f", "y": 2}])
    dev = _jsonl(tmp_path, "dev.jsonl", [{"q": "g", "p": "h", "y": "10"}])
    data = load_generic_task(train_file=train, dev_file=dev, text_columns=("q", "p"), label_column="y")
    assert data.task.label_names == ("2", "10")
    assert data.task.metrics == ("accuracy", "f1")
    assert data.train[0] == Example("a", "b", 1) and data.dev == [Example("g", "h", 1)]


def test_generic_tsv_regression(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("s1\ts2\tscore\nA cat.\tA dog.\t1.5\nA car.\tA bus.\t3\n")
    dev = _jsonl(tmp_path, "dev.jsonl", [{"s1": "x", "s2": "y", "score": 4.25}])
    data = load_generic_task(train_file=train, dev_file=dev, text_columns=["s1", "s2"], label_column="score",
                             regression=True)
    assert data.task.is_regression and data.task.label_names == ()
    assert (data.task.metrics, data.task.main_metric) == (("pearson", "spearmanr"), "pearson")
    assert data.train == [Example("A cat.", "A dog.", 1.5), Example("A car.", "A bus.", 3.0)]
    assert data.dev == [Example("x", "y", 4.25)]


def test_generic_subsampling(tmp_path):
    train = _csv(tmp_path, "train.csv", [(f"t {i}", i % 3) for i in range(30)])
    data = load_generic_task(train_file=train, dev_file=train, text_columns=["text"], label_column="label",
                             max_train_examples=7, seed=1)
    assert _indices(data) == np.sort(np.random.default_rng(1).choice(30, size=7, replace=False)).tolist()
    assert len(data.dev) == 30


def _generic(tmp_path, train, dev=None, **kwargs):
    kwargs = {"text_columns": ["text"], "label_column": "label", **kwargs}
    return load_generic_task(train_file=train, dev_file=dev or train, **kwargs)


def test_generic_errors(tmp_path):
    good = _csv(tmp_path, "good.csv", [("a", "x"), ("b", "y")])
    with pytest.raises(TaskError, match=r"good\.csv has no column 'txt' \(its columns: 'text', 'label'\)"):
        _generic(tmp_path, good, text_columns=["txt"])
    with pytest.raises(TaskError, match=r"dev\.csv, line 2: label 'z' does not occur in the training file "
                                        r"\(its labels: x, y\)"):
        _generic(tmp_path, good, _csv(tmp_path, "dev.csv", [("c", "z")]))
    (tmp_path / "x.parquet").touch()
    with pytest.raises(TaskError, match=r"unsupported extension '\.parquet'"):
        _generic(tmp_path, tmp_path / "x.parquet", good)
    with pytest.raises(TaskError, match=r"task file '.*missing\.csv' does not exist"):
        _generic(tmp_path, tmp_path / "missing.csv")
    with pytest.raises(TaskError, match="one or two text columns, got 3"):
        _generic(tmp_path, good, text_columns=["text", "text", "label"])
    with pytest.raises(TaskError, match=r"single label 'x'.*pass regression=True"):
        _generic(tmp_path, _csv(tmp_path, "one.csv", [("a", "x"), ("b", "x")]))
    with pytest.raises(TaskError, match=r"empty\.csv, line 3: column 'text' is empty"):
        _generic(tmp_path, _csv(tmp_path, "empty.csv", [("a", "x"), ("  ", "y")]))
    with pytest.raises(TaskError, match=r"nolabel\.csv, line 2: missing label ''"):
        _generic(tmp_path, _csv(tmp_path, "nolabel.csv", [("a", ""), ("b", "y")]))
    with pytest.raises(TaskError, match=r"short\.csv, line 3: 1 fields, fewer than the header's 2"):
        _generic(tmp_path, _write(tmp_path, {"short.csv": "text,label\na,x\nb\n"}) / "short.csv")
    with pytest.raises(TaskError, match=r"score\.csv, line 2: label 'high' is not a finite number"):
        _generic(tmp_path, _csv(tmp_path, "score.csv", [("a", "high")]), regression=True)


def test_generic_jsonl_errors(tmp_path):
    bad = _write(tmp_path, {"bad.jsonl": '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n'}) / "bad.jsonl"
    with pytest.raises(TaskError, match=r"bad\.jsonl, line 2 is not valid JSON"):
        _generic(tmp_path, bad)
    array = _jsonl(tmp_path, "array.jsonl", [["a", 1]])
    with pytest.raises(TaskError, match=r"array\.jsonl, line 1 holds a list, not a JSON object"):
        _generic(tmp_path, array)
    missing = _jsonl(tmp_path, "missing.jsonl", [{"text": "a", "label": 0}, {"txt": "b", "label": 1}])
    with pytest.raises(TaskError, match=r"missing\.jsonl, line 2 has no column 'text' \(its columns: 'txt', "
                                        r"'label'\)"):
        _generic(tmp_path, missing)
    number = _jsonl(tmp_path, "number.jsonl", [{"text": 3, "label": 0}])
    with pytest.raises(TaskError, match=r"number\.jsonl, line 1: column 'text' holds 3, not text"):
        _generic(tmp_path, number)


# ---------------------------------------------------------------------------------------------------- metrics

# A binary confusion matrix: tp 6, tn 3, fp 1, fn 2.
PRED = np.array([1] * 6 + [0] * 3 + [1] + [0] * 2)
GOLD = np.array([1] * 6 + [0] * 3 + [0] + [1] * 2)


def test_binary_metrics_by_hand():
    assert accuracy(PRED, GOLD) == 9 / 12
    assert f1_score(PRED, GOLD) == pytest.approx(2 * 6 / (2 * 6 + 1 + 2), abs=1e-15)
    assert matthews_corrcoef(PRED, GOLD) == pytest.approx((6 * 3 - 1 * 2) / math.sqrt(7 * 8 * 4 * 5), abs=1e-15)


def test_perfect_and_constant_predictors():
    assert matthews_corrcoef(GOLD, GOLD) == 1.0
    assert matthews_corrcoef(1 - GOLD, GOLD) == -1.0
    assert matthews_corrcoef(np.ones_like(GOLD), GOLD) == 0.0
    assert matthews_corrcoef(np.zeros(4), np.zeros(4)) == 0.0
    assert f1_score(GOLD, GOLD) == 1.0 and accuracy(GOLD, GOLD) == 1.0
    assert f1_score(np.zeros(3), np.zeros(3)) == 0.0  # no positive anywhere
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0, abs=1e-15)
    assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert spearmanr([1.0, 5.0, 9.0], [0.1, 0.2, 0.3]) == 1.0


def test_multiclass_mcc_by_hand():
    # Confusion matrix rows true, columns predicted: [[2, 1, 0], [0, 2, 0], [1, 0, 1]].
    gold = [0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 1, 1, 1, 0, 2]
    t, p, c, s = np.array([3, 2, 2]), np.array([3, 3, 1]), 5, 7
    expected = (c * s - t @ p) / math.sqrt((s * s - p @ p) * (s * s - t @ t))
    assert matthews_corrcoef(pred, gold) == pytest.approx(expected, abs=1e-15)


def test_correlations_by_hand():
    assert pearson([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]) == pytest.approx(9 / math.sqrt(84), abs=1e-15)
    # Ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]: r = 4.5 / sqrt(4.5 * 5).
    assert spearmanr([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(0.9), abs=1e-15)
    assert spearmanr([3.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]) == pytest.approx(math.sqrt(0.6), abs=1e-15)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no predictions"):
        pearson([], [])


def test_compute_metrics_per_task():
    logits = np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])  # argmax 1, 0, 1, 0
    gold = np.array([1, 0, 0, 0])
    cola = compute_metrics(get_task("cola"), logits, gold)
    # tp 1, tn 2, fp 1, fn 0
    assert cola == {"matthews_correlation": pytest.approx(2 / math.sqrt(2 * 1 * 3 * 2), abs=1e-15)}
    mrpc = compute_metrics(get_task("mrpc"), logits, gold)
    assert mrpc == {"f1": pytest.approx(2 / 3), "accuracy": 0.75, "combined": pytest.approx((2 / 3 + 0.75) / 2)}
    assert list(mrpc) == ["f1", "accuracy", "combined"]
    assert all(type(v) is float for v in mrpc.values())
    mnli = compute_metrics(get_task("mnli"), np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 2, 1]))
    assert mnli == {"accuracy": 0.75}
    assert compute_metrics(get_task("sst2"), np.array([1, 0, 0]), np.array([1, 0, 1])) == {"accuracy": 2 / 3}
    stsb = compute_metrics(get_task("stsb"), np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 2.0, 4.0]))
    assert stsb == {"pearson": pytest.approx(9 / math.sqrt(84), abs=1e-15), "spearmanr": 1.0,
                    "combined": pytest.approx((9 / math.sqrt(84) + 1) / 2, abs=1e-15)}


def test_compute_metrics_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"predictions must be logits of shape \(N, 2\)"):
        compute_metrics(get_task("sst2"), np.zeros((4, 3)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"predictions must be logits .* got float64 \(4,\)"):
        compute_metrics(get_task("sst2"), np.zeros(4), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"regression task: predictions must have shape \(N,\) or \(N, 1\)"):
        compute_metrics(get_task("stsb"), np.zeros((4, 2)), np.zeros(4))


def test_metrics_match_sklearn_and_scipy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        gold, pred = rng.integers(0, 3, n), rng.integers(0, 3, n)
        assert matthews_corrcoef(pred, gold) == pytest.approx(sklearn_metrics.matthews_corrcoef(gold, pred),
                                                              abs=1e-12)
        gold2, pred2 = gold % 2, pred % 2
        assert f1_score(pred2, gold2) == pytest.approx(sklearn_metrics.f1_score(gold2, pred2), abs=1e-12)
        assert accuracy(pred, gold) == pytest.approx(sklearn_metrics.accuracy_score(gold, pred), abs=1e-12)
        x, y = rng.integers(0, 6, n).astype(float), rng.normal(size=n).round(1)  # many ties
        assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
        assert spearmanr(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
