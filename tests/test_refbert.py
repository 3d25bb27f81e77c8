"""RefBERT reference samples: the pool (retrieval, exclusion, files), the attention over references, the model's
reference inputs, and ``nasbert finetune --references`` end to end (tiny models, a tiny GLUE-layout task)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel, BertTokenizerFast

from nasbert.cli import main
from nasbert.export.hf import save_hf_model
from nasbert.finetune import load_task
from nasbert.finetune.trainer import FinetuneError, finetune
from nasbert.modeling import NasBertConfig, NasBertForSequenceClassification, NasBertModel
from nasbert.modeling.modeling_nasbert import additive_attention_mask, attention
from nasbert.finetune.refbert import ReferencePool, ReferencePoolError

POOL_TEXTS = ["the function return value", "a class object", "list of module name", "the class statement",
              "a class object"]
# Two blocks; the first mha layer is the second layer (16 wide), after a convolution.
BLOCKS = [{"width": 16, "ops": ["sepconv3", "mha", "ffn", "identity"]},
          {"width": 32, "ops": ["mha", "ffn", "identity", "identity"]}]
WORDS = ["the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "this", "object", "class",
         "list", "type", "module", "name", "function"]


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher_dir):
    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


@pytest.fixture(scope="module")
def pool(tiny_teacher_dir):
    return ReferencePool.build(POOL_TEXTS, teacher=tiny_teacher_dir, max_reference_tokens=4, progress=False)


def _ids(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _tfidf_cosine(tokenizer, query: str, texts: list[str]) -> list[float]:
    """TF-IDF cosine of ``query`` with each text, computed by hand from the module's definition."""
    tokenise = lambda t: Counter(tokenizer.tokenize(t))  # noqa: E731  special tokens and padding excluded
    rows = [tokenise(t) for t in texts]
    df = Counter(tok for row in rows for tok in row)
    idf = lambda tok: math.log((1 + len(rows)) / (1 + df[tok])) + 1  # noqa: E731

    def vector(counts):
        v = {tok: c * idf(tok) for tok, c in counts.items()}
        norm = math.sqrt(sum(w * w for w in v.values()))
        return {tok: w / norm for tok, w in v.items()}

    q = vector(tokenise(query))
    return [sum(w * vector(row).get(tok, 0.0) for tok, w in q.items()) for row in rows]


# ------------------------------------------------------------------------------------------------ the pool


def test_retrieval_returns_the_most_similar_sample(pool, tokenizer, tiny_teacher_dir):
    queries = ["class object type", "name of module list", "the value of the function"]
    found = pool.retrieve(*_ids(tokenizer, queries))
    assert found.indices.tolist() == [1, 2, 0]
    for query, score in zip(queries, found.scores):
        expected = _tfidf_cosine(tokenizer, query, POOL_TEXTS)
        assert score == pytest.approx(max(expected), rel=1e-6)
    assert found.scores[1] == pytest.approx(1.0)  # the same bag of words as row 2

    # The stored states are the teacher's last layer over the first 4 tokens (float16).
    teacher = BertModel.from_pretrained(tiny_teacher_dir).eval()
    ids, mask = _ids(tokenizer, [POOL_TEXTS[2]])
    with torch.no_grad():
        want = teacher(input_ids=ids, attention_mask=mask).last_hidden_state[0, :4]
    states, ref_mask = pool.gather([2, 1])
    assert states.shape == (2, 4, 32) and states.dtype == torch.float32 and ref_mask.dtype == torch.int64
    assert ref_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]  # "[CLS] a class object [SEP]" keeps 4 of 5
    torch.testing.assert_close(states[0], want.half().float(), rtol=0, atol=0)
    assert pool.meta["num_tokens"] == 4 * len(POOL_TEXTS) and pool.nbytes > 0


def test_ties_go_to_the_lowest_index_and_no_shared_token_to_row_0(pool, tokenizer):
    found = pool.retrieve(*_ids(tokenizer, ["object"]))  # rows 1 and 4 are the same text
    assert found.indices.tolist() == [1]
    found = pool.retrieve(*_ids(tokenizer, ["type"]))  # in no pool row: every score is 0
    assert found.indices.tolist() == [0] and found.scores.tolist() == [0.0]
    found = pool.retrieve(*_ids(tokenizer, ["type"]), exclude=[0])  # the lowest row still allowed
    assert found.indices.tolist() == [1]


def test_training_queries_never_retrieve_themselves_or_a_duplicate(pool, tokenizer):
    ids, mask = _ids(tokenizer, ["a class object", "the class statement"])
    assert pool.retrieve(ids, mask).indices.tolist() == [1, 3]
    # Query 0 is row 1 and row 4 is its duplicate: both excluded, the next best is row 3 ("class"). Query 1 is
    # row 3: the next best is row 0 ("the" is rarer in the pool than "class").
    cosine = _tfidf_cosine(tokenizer, "the class statement", POOL_TEXTS)
    assert cosine[0] > cosine[1] > 0 and cosine[3] == pytest.approx(1.0)
    found = pool.retrieve(ids, mask, exclude=[1, 3])
    assert found.indices.tolist() == [3, 0]
    assert found.scores[1] == pytest.approx(cosine[0], rel=1e-6)
    assert pool.retrieve(ids, mask, exclude=[-1, -1]).indices.tolist() == [3, 0]  # duplicates by content alone
    states, ref_mask = pool.lookup(ids, mask, exclude=[1, 3])
    want_states, want_mask = pool.gather([3, 0])
    assert torch.equal(states, want_states) and torch.equal(ref_mask, want_mask)
    with pytest.raises(ReferencePoolError, match="exclude has 1 entries for 2 queries"):
        pool.retrieve(ids, mask, exclude=[1])
    with pytest.raises(ReferencePoolError, match="outside the pool's vocabulary"):
        pool.retrieve(torch.tensor([[2, 500, 3]]))


def test_a_pool_of_one_sample_cannot_serve_itself(tiny_teacher_dir, tokenizer):
    single = ReferencePool.build(["the value"], teacher=tiny_teacher_dir, progress=False)
    with pytest.raises(ReferencePoolError, match="every pool row is excluded"):
        single.retrieve(*_ids(tokenizer, ["the value"]), exclude=[0])


def test_save_load_round_trip_is_bit_exact(pool, tokenizer, tmp_path):
    pool.save(tmp_path / "refs")
    assert sorted(p.name for p in (tmp_path / "refs").iterdir()) == ["references.json", "references.safetensors"]
    meta = json.loads((tmp_path / "refs" / "references.json").read_text())
    assert meta["hidden_size"] == 32 and meta["max_reference_tokens"] == 4 and meta["num_samples"] == 5
    assert meta["vocab_size"] == len(tokenizer) and meta["max_length"] == 64  # capped at the teacher's positions
    loaded = ReferencePool.load(tmp_path / "refs", hidden_size=32, tokenizer=tokenizer)
    assert loaded.meta == pool.meta
    for name, tensor in pool._tensors().items():
        assert torch.equal(getattr(loaded, name), tensor) and getattr(loaded, name).dtype == tensor.dtype, name
    ids, mask = _ids(tokenizer, ["class object type", "list"])
    a, b = pool.lookup(ids, mask), loaded.lookup(ids, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_pool_directories_are_clear_errors(pool, tmp_path):
    with pytest.raises(ReferencePoolError, match="does not exist.*nasbert references build"):
        ReferencePool.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReferencePoolError, match="not a reference pool: references.json, references.safetensors"):
        ReferencePool.load(tmp_path / "empty")
    pool.save(tmp_path / "refs")
    with pytest.raises(ReferencePoolError, match="32-wide teacher states, but the model reads 16-wide"):
        ReferencePool.load(tmp_path / "refs", hidden_size=16)
    vocab = {f"[unused{i}]": i for i in range(40)} | {"[PAD]": 40, "[UNK]": 41, "[CLS]": 42, "[SEP]": 43}
    with pytest.raises(ReferencePoolError, match="another vocabulary"):
        ReferencePool.load(tmp_path / "refs", tokenizer=BertTokenizerFast(vocab=vocab))
    meta = json.loads((tmp_path / "refs" / "references.json").read_text())
    (tmp_path / "refs" / "references.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ReferencePoolError, match="format version 99"):
        ReferencePool.load(tmp_path / "refs")
    (tmp_path / "refs" / "references.json").write_text(json.dumps({**meta, "num_samples": 6}))
    with pytest.raises(ReferencePoolError, match="damaged or does not match.*6 samples expected"):
        ReferencePool.load(tmp_path / "refs")
    (tmp_path / "refs" / "references.json").write_text(json.dumps(meta))
    data = (tmp_path / "refs" / "references.safetensors").read_bytes()
    (tmp_path / "refs" / "references.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReferencePoolError, match="damaged; rebuild"):
        ReferencePool.load(tmp_path / "refs")


# ------------------------------------------------------------------------------------------------ the model


def test_attention_with_memory_is_attention_over_concatenated_keys_and_values():
    g = torch.Generator().manual_seed(0)
    B, T, R, w, hs = 2, 5, 3, 8, 4
    x, memory = torch.randn(B, T, w, generator=g), torch.randn(B, R, w, generator=g)
    weights = [torch.randn(w, w, generator=g) / 3 if i % 2 == 0 else torch.randn(w, generator=g) for i in range(8)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    ref_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    got = attention(x, additive_attention_mask(mask, x.dtype), *weights, head_size=hs, dropout=0.0, training=False,
                    memory=memory, memory_additive_mask=additive_attention_mask(ref_mask, x.dtype))
    q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b = weights
    want = torch.zeros(B, T, w)
    for b in range(B):
        keys_in = torch.cat([x[b], memory[b]])  # (T + R, w)
        keep = torch.cat([mask[b], ref_mask[b]]).bool()
        q, k, v = x[b] @ q_w.T + q_b, keys_in @ k_w.T + k_b, keys_in @ v_w.T + v_b
        heads = []
        for h in range(w // hs):
            cols = slice(h * hs, (h + 1) * hs)
            scores = q[:, cols] @ k[keep][:, cols].T / math.sqrt(hs)  # masked keys simply left out
            heads.append(scores.softmax(-1) @ v[keep][:, cols])
        want[b] = torch.cat(heads, -1) @ o_w.T + o_b
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Without memory the kernel is plain self-attention, as before.
    plain = attention(x, additive_attention_mask(mask, x.dtype), *weights, head_size=hs, dropout=0.0, training=False)
    assert not torch.allclose(plain, got)


def test_model_reads_references_through_its_first_mha_layer():
    config = NasBertConfig(blocks=BLOCKS, vocab_size=99, hidden_size=32, head_size=8, max_position_embeddings=64,
                           reference_size=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = NasBertModel(config).eval()
    with torch.no_grad():  # weights of a trained size, so that the references move the output visibly
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.normal_(0.0, 0.3)
    assert model.reference_proj.in_features == 24 and model.reference_proj.out_features == 16
    assert model.encoder.reference_layer == 1
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 99, (2, 7), generator=g)
    states = torch.randn(2, 4, 24, generator=g)
    ref_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        out = model(ids, reference_states=states, reference_mask=ref_mask).last_hidden_state
        other = model(ids, reference_states=10 * states.flip(1), reference_mask=ref_mask).last_hidden_state
        # Padded reference tokens (mask 0) change nothing, whatever they hold and however many there are.
        noisy = states.clone()
        noisy[1, 2:] = 100.0
        padded = torch.cat([noisy, torch.randn(2, 3, 24, generator=g)], 1)
        padded_mask = torch.cat([ref_mask, torch.zeros(2, 3, dtype=torch.long)], 1)
        same = model(ids, reference_states=padded, reference_mask=padded_mask).last_hidden_state
        full = model(ids[:1], reference_states=states[:1]).last_hidden_state  # no mask: every reference is real
    assert (out - other).abs().amax(dim=(1, 2)).min() > 1e-2  # every sequence's output moves
    torch.testing.assert_close(same, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, out[:1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="trained with reference samples.*pass reference_states"):
        model(ids)
    with pytest.raises(ValueError, match=r"must be \(batch=2, references, 24\)"):
        model(ids, reference_states=torch.zeros(2, 4, 16))
    plain = NasBertModel(NasBertConfig(blocks=BLOCKS, vocab_size=99, hidden_size=32, head_size=8,
                                       max_position_embeddings=64))
    assert not hasattr(plain, "reference_proj")
    with pytest.raises(ValueError, match="takes no references"):
        plain(ids, reference_states=states)
    with pytest.raises(ValueError, match="references need an mha layer"):
        NasBertConfig(blocks=[{"width": 16, "ops": ["ffn", "sepconv3"]}], reference_size=24)


# ------------------------------------------------------------------------------------------------ fine-tuning


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue") / "SST-2"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("dev", 24)):
        rows = []
        for i in range(n):
            words = list(rng.choice(WORDS, size=int(rng.integers(3, 8))))
            if i % 2:
                words[int(rng.integers(0, len(words)))] = "value"
            rows.append(f"{' '.join(words)}\t{i % 2}\n")
        (root / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    return root.parent


@pytest.fixture(scope="module")
def student_dir(tiny_teacher_dir, tmp_path_factory):
    """An exported nasbert backbone (random weights) sharing the tiny teacher's tokenizer."""
    torch.manual_seed(0)
    model = NasBertModel(NasBertConfig(blocks=BLOCKS, vocab_size=99, hidden_size=32, head_size=8,
                                       max_position_embeddings=64))
    path = tmp_path_factory.mktemp("student") / "model"
    save_hf_model(model, path, tokenizer=AutoTokenizer.from_pretrained(tiny_teacher_dir))
    return str(path)


TRAIN = ["--epochs", "3", "--lr", "3e-3", "--batch-size", "16", "--max-seq-len", "16", "--no-progress"]


def test_finetune_with_references_end_to_end(glue_dir, student_dir, tiny_teacher_dir, tmp_path, capsys):
    pool_dir, out = tmp_path / "pool", tmp_path / "ft"
    assert main(["references", "build", "--task", "sst2", "--data-dir", str(glue_dir), "--teacher", tiny_teacher_dir,
                 "--max-reference-tokens", "6", "--out", str(pool_dir), "--no-progress"]) == 0
    assert "64 reference samples" in capsys.readouterr().out
    assert main(["finetune", student_dir, "--task", "sst2", "--data-dir", str(glue_dir), "--references",
                 str(pool_dir), "--out", str(out), "--json", *TRAIN]) == 0
    reported = json.loads(capsys.readouterr().out)["dev"]
    assert set(reported) == {"accuracy"}
    model_dir = out / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["reference_size"] == 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["references"]["samples"] == 64 and metrics["references"]["path"] == str(pool_dir)

    # Training examples never reference themselves (the pool is the training set); dev examples retrieve freely.
    task = load_task("sst2", data_dir=glue_dir)
    pool = ReferencePool.load(model_dir / "references", hidden_size=config["reference_size"],
                              tokenizer=AutoTokenizer.from_pretrained(model_dir))
    assert pool.meta == ReferencePool.load(pool_dir).meta
    found = torch.load(out / "neighbours.pt", weights_only=False)
    assert all(task.train[j].text_a.split() != task.train[i].text_a.split() for i, j in enumerate(found["train"]))
    tok = AutoTokenizer.from_pretrained(model_dir)
    dev = [e.text_a for e in task.dev]
    assert found["dev"].tolist() == pool.retrieve(*_ids(tok, dev)).indices.tolist()

    # The exported classifier with its pool: PyTorch and ONNX Runtime agree with reference inputs.
    import onnxruntime as ort

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert isinstance(model, NasBertForSequenceClassification)
    enc = tok(dev[:3], padding=True, return_tensors="np", return_token_type_ids=True)
    states, ref_mask = pool.lookup(enc["input_ids"], enc["attention_mask"])
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()][3:] == ["reference_states", "reference_mask"]
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    got = session.run(["logits"], {**feeds, "reference_states": states.numpy(), "reference_mask": ref_mask.numpy()})[0]
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, reference_states=states,
                     reference_mask=ref_mask).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert metrics["onnx_max_abs_diff"] < 1e-4

    # The accuracy reported is the saved model's with its pool's references, recomputed here sentence by sentence.
    predicted = []
    for example in task.dev:
        enc = tok(example.text_a, truncation=True, max_length=16, return_tensors="pt")
        states, ref_mask = pool.lookup(enc["input_ids"], enc["attention_mask"])
        with torch.no_grad():
            logits = model(**enc, reference_states=states, reference_mask=ref_mask).logits
        predicted.append(int(logits.argmax(-1)))
    right = sum(p == e.label for p, e in zip(predicted, task.dev))
    assert set(predicted) == {0, 1}  # not one class for all, so the comparison below says something
    assert reported == metrics["dev"]
    assert reported["accuracy"] == pytest.approx(right / len(task.dev), abs=1e-9)

    # Another pool in the same output directory is refused, like any other changed setting.
    assert main(["references", "build", "--task", "sst2", "--data-dir", str(glue_dir), "--teacher", tiny_teacher_dir,
                 "--max-reference-tokens", "3", "--out", str(tmp_path / "pool2"), "--no-progress"]) == 0
    mtime = (out / "metrics.json").stat().st_mtime_ns
    assert main(["finetune", student_dir, "--task", "sst2", "--data-dir", str(glue_dir), "--references",
                 str(tmp_path / "pool2"), "--out", str(out), *TRAIN]) == 1
    assert "other settings (references differ)" in capsys.readouterr().err
    assert (out / "metrics.json").stat().st_mtime_ns == mtime

    # A model fine-tuned with references needs them; a BERT cannot take them.
    with pytest.raises(FinetuneError, match="fine-tuned with 32-wide reference samples; pass --references"):
        finetune(model_dir, task, out=tmp_path / "again", onnx=False, progress=False)
    with pytest.raises(FinetuneError, match="need a nasbert model"):
        finetune(tiny_teacher_dir, task, out=tmp_path / "bert", references=pool_dir, onnx=False, progress=False)


def test_reference_errors_through_the_cli(glue_dir, student_dir, tmp_path, capsys):
    assert main(["finetune", student_dir, "--task", "sst2", "--data-dir", str(glue_dir), "--references",
                 str(tmp_path / "missing"), "--out", str(tmp_path / "ft"), *TRAIN]) == 1
    assert "does not exist or is not a directory: build one with: nasbert references build" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()
    assert main(["references", "build", "--out", str(tmp_path / "p")]) == 1
    assert "--task TASK" in capsys.readouterr().err
