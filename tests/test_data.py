"""The corpus pipeline (three sources, packing, validation split, cache, errors), MLM masking and batch order.

Everything runs on small files written to ``tmp_path`` with the tiny 99-token WordPiece tokenizer.
"""

from __future__ import annotations

import json
import logging

import datasets
import pytest
import torch
from transformers import AutoTokenizer, BertTokenizerFast

from nasbert.data import (
    BatchIterator,
    CorpusConfig,
    CorpusError,
    builtin_documents,
    load_corpus,
    mask_tokens,
    read_documents,
)

# Words of the tiny vocabulary: each is exactly one token.
WORDS = ["the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "this", "be", "at",
         "by", "an", "are", "or", "from", "not", "value", "function", "object", "class", "return", "statement",
         "name", "list", "type", "module"]


def sentence(i: int, n: int) -> str:
    """``n`` one-token words, different for different ``i``."""
    return " ".join(WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] for j in range(n))


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """``datasets`` leaves lock files in its cache even when streaming local files: keep them in tmp_path."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


@pytest.fixture(scope="module")
def tok(tiny_teacher_dir):
    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


def files_config(*paths, **kwargs) -> CorpusConfig:
    kwargs.setdefault("seq_len", 8)
    kwargs.setdefault("min_valid_sequences", 1)
    return CorpusConfig(source="files", paths=tuple(str(p) for p in paths), **kwargs)


def expected_rows(documents, tok, seq_len):
    """Packing, written out the slow way: [SEP] between documents, [CLS] body [SEP] rows, remainder dropped."""
    stream = []
    for i, doc in enumerate(documents):
        if i:
            stream.append(tok.sep_token_id)
        stream += tok(doc, add_special_tokens=False)["input_ids"]
    body = seq_len - 2
    n = len(stream) // body
    return torch.tensor([[tok.cls_token_id] + stream[r * body:(r + 1) * body] + [tok.sep_token_id]
                         for r in range(n)], dtype=torch.int64).reshape(n, seq_len)


def split_rows(rows, num_valid):
    """The documented split: row ((2 i + 1) N) // (2 M) for i < M is validation."""
    n = len(rows)
    valid_idx = [((2 * i + 1) * n) // (2 * num_valid) for i in range(num_valid)]
    train_idx = [r for r in range(n) if r not in valid_idx]
    return rows[train_idx], rows[valid_idx], valid_idx


@pytest.fixture
def count_calls(monkeypatch, tok):
    """Counts calls of the tokenizer (its class's ``__call__``)."""
    calls = []
    original = type(tok).__call__

    def counting(self, *args, **kwargs):
        calls.append(args[0] if args else kwargs.get("text"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", counting)
    return calls


# ------------------------------------------------------------------------------------------------ sources


def test_builtin_source(tok):
    config = CorpusConfig(max_documents=3, seq_len=16, min_valid_sequences=2)
    docs = read_documents(config)
    assert docs == builtin_documents()[:3]
    corpus = load_corpus(config, tok, show_progress=False)
    rows = expected_rows(docs, tok, 16)
    num_valid = max(2, round(len(rows) * 0.05))
    train, valid, _ = split_rows(rows, num_valid)
    assert corpus.train.dtype == torch.int64 and corpus.seq_len == 16
    assert torch.equal(corpus.train, train) and torch.equal(corpus.valid, valid)
    assert len(corpus.valid) == num_valid and len(corpus.train) == len(rows) - num_valid > 0


def test_txt_one_document_per_line(tmp_path, tok):
    lines = [sentence(i, 3 + i) for i in range(6)]
    path = tmp_path / "lines.txt"
    # a whitespace-only line is not an empty line; empty lines only at the end do not make it a paragraph file
    path.write_text("\n".join(lines[:3]) + "\n   \n" + "\n".join(["  " + lines[3]] + lines[4:]) + "\n\n\n")
    assert read_documents(files_config(path)) == lines


def test_txt_blank_line_separated(tmp_path, tok):
    path = tmp_path / "paras.txt"
    path.write_text("the value\nof a function\n\nis an object\n\n\nclass type\r\nmodule\n")
    config = files_config(path)
    assert read_documents(config) == ["the value\nof a function", "is an object", "class type\nmodule"]


def test_jsonl(tmp_path, tok):
    path = tmp_path / "docs.jsonl"
    rows = [{"body": sentence(i, 4), "id": i} for i in range(5)] + [{"body": None, "id": 5}, {"body": "  ", "id": 6}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = files_config(path, text_column="body")
    assert read_documents(config) == [sentence(i, 4) for i in range(5)]
    with pytest.raises(CorpusError, match=r"no field 'text' \(its fields: 'body', 'id'\).*text_column"):
        read_documents(files_config(path))


def test_directory_mixing_formats(tmp_path, tok):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    (root / "a.txt").write_text("line one\nline two\n")
    (root / "sub" / "c.txt").write_text("para one\n\npara two\n")
    (root / "sub" / "wiki_00").write_text('<doc id="1" url="?curid=1" title="Title">\nTitle\n\nwiki text\n</doc>\n')
    (root / "notes.csv").write_text("ignored,csv\n")
    (root / ".hidden.txt").write_text("hidden\n")
    (root / "zz.TXT").write_text("last file\n")
    docs = read_documents(files_config(root))
    assert docs == ["line one", "line two", "from jsonl", "para one", "para two", "wiki text", "last file"]
    # max_documents stops early, across files
    assert read_documents(files_config(root, max_documents=3)) == docs[:3]
    # a file named both directly and through its directory is read once
    assert read_documents(files_config(root / "a.txt", root)) == docs


def test_wikiextractor_markup_removed(tmp_path, tok):
    wiki = (
        '<doc id="12" url="?curid=12" title="Zebra">\nZebra\n\n'
        "the zebra is a type of object.\nclass &#39;module&#39;.&lt;ref name=\"x\"&gt;&lt;/ref&gt;\n\n</doc>\n"
        '<doc id="13" url="?curid=13" title="Empty page">\nEmpty page\n\n</doc>\n'
        '<doc id="14" url="?curid=14" title="Quux">\nQuux\n\nvalue of a list &lt;br&gt; is it\n</doc>\n'
    )
    path = tmp_path / "wiki_00"
    path.write_text(wiki)
    config = files_config(path, seq_len=6, valid_fraction=0.0, min_valid_sequences=0)  # all rows, in order
    docs = read_documents(config)
    assert docs == ["the zebra is a type of object.\nclass 'module'.", "value of a list is it"]
    corpus = load_corpus(config, tok, show_progress=False)
    text = tok.decode(corpus.train[:, 1:-1].flatten())
    # Exactly the article text: no titles, no markup (the tiny vocabulary has no < > ", so any would be [UNK]).
    assert text == "the zebra is a type of object. class ' module '. [SEP] value of a list is it"[:len(text)]
    assert len(text) > 60


def test_file_name_with_glob_characters(tmp_path):
    path = tmp_path / "part[1].txt"
    path.write_text("the value\n")
    (tmp_path / "part1.txt").write_text("not this one\n")
    assert read_documents(files_config(path)) == ["the value"]


def test_hf_source_goes_through_load_dataset(monkeypatch, tok):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_dict({"sentence": [sentence(i, 5) for i in range(20)] + ["", None],
                                           "label": list(range(22))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    config = CorpusConfig(source="hf", name="wikitext", config_name="wikitext-2-raw-v1", split="validation",
                          text_column="sentence", seq_len=8, min_valid_sequences=1)
    assert read_documents(config) == [sentence(i, 5) for i in range(20)]
    assert calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "validation"})]
    corpus = load_corpus(config, tok, show_progress=False)
    assert len(corpus.train) + len(corpus.valid) == len(expected_rows(read_documents(config), tok, 8))

    with pytest.raises(CorpusError, match=r"no text column 'text'.*'sentence', 'label'"):
        read_documents(CorpusConfig(source="hf", name="wikitext"))


def test_hf_load_failure_is_a_corpus_error(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("Dataset 'nope' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(CorpusError, match=r"cannot load Hugging Face dataset 'nope'.*offline"):
        read_documents(CorpusConfig(source="hf", name="nope"))


# ------------------------------------------------------------------------------------- packing and the split


def test_packing_and_validation_split(tmp_path, tok):
    docs = [sentence(i, 3 + i % 9) for i in range(60)]
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(docs) + "\n")
    config = files_config(path, seq_len=10, valid_fraction=0.1, min_valid_sequences=2)
    corpus = load_corpus(config, tok, show_progress=False)
    rows = expected_rows(docs, tok, 10)
    num_valid = max(2, round(len(rows) * 0.1))
    train, valid, valid_idx = split_rows(rows, num_valid)
    assert torch.equal(corpus.train, train) and torch.equal(corpus.valid, valid)
    assert len(corpus.train) + len(corpus.valid) == len(rows) > 20
    # [CLS] first, [SEP] last, [CLS] nowhere else; [SEP] inside a row only between documents
    both = torch.cat([corpus.train, corpus.valid])
    assert (both[:, 0] == tok.cls_token_id).all() and (both[:, -1] == tok.sep_token_id).all()
    assert not (both[:, 1:] == tok.cls_token_id).any()
    inner_seps = int((both[:, 1:-1] == tok.sep_token_id).sum())
    assert 0 < inner_seps <= len(docs) - 1
    # the validation rows are spread through the corpus, not bunched at one end
    assert valid_idx[0] < len(rows) // num_valid and valid_idx[-1] >= len(rows) - len(rows) // num_valid
    # deterministic: a second run gives the same split
    again = load_corpus(config, tok, show_progress=False)
    assert torch.equal(again.train, corpus.train) and torch.equal(again.valid, corpus.valid)
    assert again.fingerprint == corpus.fingerprint


def test_min_valid_sequences_wins_over_fraction(tmp_path, tok):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(sentence(i, 6) for i in range(20)) + "\n")
    corpus = load_corpus(files_config(path, seq_len=8, valid_fraction=0.0, min_valid_sequences=5), tok,
                         show_progress=False)
    assert len(corpus.valid) == 5
    none = load_corpus(files_config(path, seq_len=8, valid_fraction=0.0, min_valid_sequences=0), tok,
                       show_progress=False)
    assert len(none.valid) == 0 and len(none.train) == len(corpus.train) + 5


def test_progress_bar_shown_or_not(tmp_path, tok, capsys):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(sentence(i, 6) for i in range(10)) + "\n")
    load_corpus(files_config(path), tok, show_progress=True)
    assert "tokenising corpus" in capsys.readouterr().err
    load_corpus(files_config(path), tok, show_progress=False)
    assert "tokenising corpus" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- the cache


def test_cache_hit_does_not_tokenise_again(tmp_path, tok, count_calls):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(sentence(i, 6) for i in range(30)) + "\n")
    cache = tmp_path / "cache"
    config = files_config(path)
    first = load_corpus(config, tok, cache_dir=cache, show_progress=False)
    assert len(count_calls) > 0
    assert sorted(p.name for p in cache.iterdir()) == [first.fingerprint]  # no temporary leftovers
    assert sorted(p.name for p in (cache / first.fingerprint).iterdir()) == ["corpus.json", "corpus.safetensors"]
    info = json.loads((cache / first.fingerprint / "corpus.json").read_text())
    assert info["config"] == config.to_dict() and info["train_sequences"] == len(first.train)

    count_calls.clear()
    second = load_corpus(config, tok, cache_dir=cache, show_progress=False)
    assert count_calls == []
    assert second.fingerprint == first.fingerprint
    assert torch.equal(second.train, first.train) and torch.equal(second.valid, first.valid)

    # another seq_len, or edited text, is another cache entry
    other = load_corpus(files_config(path, seq_len=10), tok, cache_dir=cache, show_progress=False)
    assert other.fingerprint != first.fingerprint and len(count_calls) > 0
    path.write_text("\n".join(sentence(i, 7) for i in range(30)) + "\n")
    edited = load_corpus(config, tok, cache_dir=cache, show_progress=False)
    assert edited.fingerprint != first.fingerprint and not torch.equal(edited.train, first.train)


def test_fingerprint_ignores_tokenizer_path_but_not_vocab(tmp_path, tok):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(sentence(i, 6) for i in range(30)) + "\n")
    tok.save_pretrained(tmp_path / "copy")
    same = AutoTokenizer.from_pretrained(tmp_path / "copy")
    config = files_config(path)
    a = load_corpus(config, tok, show_progress=False).fingerprint
    assert load_corpus(config, same, show_progress=False).fingerprint == a
    vocab = sorted(tok.get_vocab(), key=tok.get_vocab().get)
    vocab[-1] = "zebra"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    other = BertTokenizerFast(vocab_file=str(tmp_path / "other" / "vocab.txt"))
    assert load_corpus(config, other, show_progress=False).fingerprint != a


def test_unreadable_cache_entry_is_rebuilt(tmp_path, tok, caplog):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(sentence(i, 6) for i in range(30)) + "\n")
    cache = tmp_path / "cache"
    first = load_corpus(files_config(path), tok, cache_dir=cache, show_progress=False)
    (cache / first.fingerprint / "corpus.safetensors").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="nasbert.data.corpus"):
        again = load_corpus(files_config(path), tok, cache_dir=cache, show_progress=False)
    assert "unreadable" in caplog.text
    assert torch.equal(again.train, first.train)
    assert torch.equal(load_corpus(files_config(path), tok, cache_dir=cache, show_progress=False).train, first.train)


# ------------------------------------------------------------------------------------------------ bad input


def test_empty_corpus(tmp_path, tok):
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    (tmp_path / "empty.jsonl").write_text("")
    cache = tmp_path / "cache"
    with pytest.raises(CorpusError, match="holds no text"):
        load_corpus(files_config(tmp_path / "blank.txt", tmp_path / "empty.jsonl"), tok, cache_dir=cache,
                    show_progress=False)
    assert not cache.exists() or not any(cache.iterdir())


def test_corpus_shorter_than_one_sequence(tmp_path, tok):
    (tmp_path / "short.txt").write_text("the value of a\n")  # 4 tokens, a row needs 30
    cache = tmp_path / "cache"
    with pytest.raises(CorpusError, match=r"too short: 1 documents, 4 tokens.*0 sequences.*seq_len=32.*lower seq_len"):
        load_corpus(files_config(tmp_path / "short.txt", seq_len=32), tok, cache_dir=cache, show_progress=False)
    assert not cache.exists() or not any(cache.iterdir())


def test_corpus_too_short_for_validation(tmp_path, tok):
    path = tmp_path / "short.txt"
    path.write_text(sentence(0, 6 * 4) + "\n")  # 24 tokens: exactly 4 rows of 6
    assert len(load_corpus(files_config(path, min_valid_sequences=3), tok, show_progress=False).train) == 1
    with pytest.raises(CorpusError, match=r"24 tokens.*4 sequences.*5 sequences \(30 tokens\).*min_valid_sequences=4"):
        load_corpus(files_config(path, min_valid_sequences=4), tok, show_progress=False)


def test_not_utf8_names_the_file(tmp_path, tok):
    good = tmp_path / "good.txt"
    good.write_text("the value\n")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("the caf\xe9 is open\n".encode("latin-1"))
    cache = tmp_path / "cache"
    with pytest.raises(CorpusError, match=r"latin1\.txt' is not UTF-8.*iconv"):
        load_corpus(files_config(good, bad), tok, cache_dir=cache, show_progress=False)
    assert not cache.exists() or not any(cache.iterdir())
    badj = tmp_path / "latin1.jsonl"
    badj.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"latin1\.jsonl' is not UTF-8"):
        read_documents(files_config(badj))


def test_bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": not json}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl' is not valid JSON Lines"):
        read_documents(files_config(path))
    path.write_text('{"text": 5}\n{"text": 6}\n')
    with pytest.raises(CorpusError, match=r"field 'text' holds int values"):
        read_documents(files_config(path))


def test_missing_paths_and_unusable_files(tmp_path):
    with pytest.raises(CorpusError, match=r"corpus path '.*nowhere' does not exist"):
        read_documents(files_config(tmp_path / "nowhere"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "table.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match=r"directory '.*d' has no usable files \(found 'table.csv'\).*\.jsonl"):
        read_documents(files_config(tmp_path / "d"))
    (tmp_path / "e").mkdir()
    with pytest.raises(CorpusError, match=r"no usable files \(found no files at all\)"):
        read_documents(files_config(tmp_path / "e"))
    with pytest.raises(CorpusError, match=r"unsupported extension '\.csv'"):
        read_documents(files_config(tmp_path / "d" / "table.csv"))


def test_config_validation(tok):
    with pytest.raises(CorpusError, match="unknown corpus source 'web'.*'builtin'.*'hf'.*'files'"):
        CorpusConfig(source="web")
    with pytest.raises(CorpusError, match="source 'hf' needs name"):
        CorpusConfig(source="hf")
    with pytest.raises(CorpusError, match="source 'files' needs paths"):
        CorpusConfig(source="files")
    with pytest.raises(CorpusError, match="paths are for source 'files'"):
        CorpusConfig(paths=("a.txt",))
    with pytest.raises(CorpusError, match="name and config_name are for source 'hf'"):
        CorpusConfig(name="wikitext")
    with pytest.raises(CorpusError, match="seq_len must be at least 3"):
        CorpusConfig(seq_len=2)
    with pytest.raises(CorpusError, match=r"valid_fraction must be a number in \[0, 1\)"):
        CorpusConfig(valid_fraction=1.0)
    with pytest.raises(CorpusError, match="max_documents must be >= 1"):
        CorpusConfig(max_documents=0)
    with pytest.raises(CorpusError, match="paths must be a list"):
        CorpusConfig(source="files", paths="a.txt")
    with pytest.raises(CorpusError, match=r"model_max_length=64.*lower seq_len"):
        load_corpus(CorpusConfig(seq_len=128), tok, show_progress=False)


def test_config_from_dict_is_strict():
    config = CorpusConfig.from_dict({"source": "files", "paths": ["a.txt", "dir"], "seq_len": 64,
                                     "valid_fraction": 0, "max_documents": None})
    assert config.paths == ("a.txt", "dir") and config.valid_fraction == 0.0
    assert CorpusConfig.from_dict(config.to_dict()) == config
    assert json.loads(json.dumps(config.to_dict()))["paths"] == ["a.txt", "dir"]
    assert CorpusConfig.from_dict(None) == CorpusConfig()
    with pytest.raises(CorpusError, match=r"^run.yaml: unknown config key 'seqlen'"):
        CorpusConfig.from_dict({"seqlen": 64}, source="run.yaml")
    with pytest.raises(CorpusError, match=r"'seq_len' must be an integer, got '64'"):
        CorpusConfig.from_dict({"seq_len": "64"})
    with pytest.raises(CorpusError, match=r"'seq_len' must be an integer, got True"):
        CorpusConfig.from_dict({"seq_len": True})
    with pytest.raises(CorpusError, match=r"'paths' must be a list"):
        CorpusConfig.from_dict({"source": "files", "paths": "a.txt"})
    with pytest.raises(CorpusError, match=r"unknown corpus source 'web'"):
        CorpusConfig.from_dict({"source": "web"})
    with pytest.raises(ValueError):  # CorpusError is a ValueError
        CorpusConfig.from_dict({"max_documents": 1.5})


# -------------------------------------------------------------------------------------------------- masking

SPECIAL = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK]
MASK = 4


def mlm_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (256, 128), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[::4, 100:] = 0  # padding
    ids[1::7, 50] = 1
    return ids


def test_mask_tokens_statistics():
    ids = mlm_batch()
    before = ids.clone()
    corrupted, labels = mask_tokens(ids, vocab_size=99, mask_token_id=MASK, special_ids=SPECIAL,
                                    generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids, before)  # the input is not modified
    special = torch.isin(ids, torch.tensor(SPECIAL))
    chosen = labels != -100
    assert not (chosen & special).any() and torch.equal(corrupted[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original tokens
    assert torch.equal(corrupted[~chosen], ids[~chosen])  # unchosen positions are unchanged
    assert abs(chosen.sum().item() / (~special).sum().item() - 0.15) < 0.005

    n = chosen.sum().item()
    masked = chosen & (corrupted == MASK)
    kept = chosen & (corrupted == ids)
    replaced = chosen & ~masked & ~kept
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    assert abs(replaced.sum().item() / n - 0.1 * 93 / 94) < 0.01  # a random token equals the original 1 in 94
    assert abs(kept.sum().item() / n - (0.1 + 0.1 / 94)) < 0.01
    assert not torch.isin(corrupted[replaced], torch.tensor(SPECIAL)).any()  # random tokens are never special
    drawn = corrupted[replaced]
    assert drawn.min() >= 5 and drawn.max() <= 98 and len(drawn.unique()) > 80  # spread over the vocabulary
    assert labels.dtype == ids.dtype and corrupted.dtype == ids.dtype


def test_mask_tokens_deterministic_per_seed():
    ids = mlm_batch()

    def run(seed, p=0.15):
        return mask_tokens(ids, vocab_size=99, mask_token_id=MASK, special_ids=SPECIAL,
                           generator=torch.Generator().manual_seed(seed), mlm_probability=p)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    all_chosen = run(7, p=1.0)[1]
    assert torch.equal(all_chosen != -100, ~torch.isin(ids, torch.tensor(SPECIAL)))
    with pytest.raises(ValueError, match="mlm_probability"):
        run(7, p=0.0)
    with pytest.raises(ValueError, match="vocab_size"):
        mask_tokens(ids, vocab_size=99, mask_token_id=120, special_ids=SPECIAL, generator=torch.Generator())


# ------------------------------------------------------------------------------------------- batch iterator


def take(it, n):
    return [it.next_indices() for _ in range(n)]


def test_batch_iterator_epochs():
    it = BatchIterator(10, 3, seed=0)
    assert it.batches_per_epoch == 3
    epoch0, epoch1 = take(it, 3), take(it, 3)
    for epoch in (epoch0, epoch1):
        rows = torch.cat(epoch)
        assert all(len(b) == 3 for b in epoch) and len(rows.unique()) == 9  # one row left out per epoch
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))  # reshuffled
    assert it.epoch == 2 and it.position == 0

    full = BatchIterator(10, 3, seed=0, drop_last=False)
    batches = take(full, 4)
    assert [len(b) for b in batches] == [3, 3, 3, 1] and sorted(torch.cat(batches).tolist()) == list(range(10))
    assert torch.equal(torch.cat(batches[:3]), torch.cat(epoch0))  # the same epoch permutation

    assert all(torch.equal(a, b) for a, b in zip(take(BatchIterator(10, 3, seed=5), 7),
                                                 take(BatchIterator(10, 3, seed=5), 7)))
    assert not torch.equal(torch.cat(take(BatchIterator(10, 3, seed=5), 3)), torch.cat(epoch0))
    assert next(iter(BatchIterator(10, 3, seed=0))).tolist() == epoch0[0].tolist()
    with pytest.raises(ValueError, match="larger than the 2 rows"):
        BatchIterator(2, 3, seed=0)


@pytest.mark.parametrize("drop_last", [True, False])
def test_batch_iterator_resumes_exactly(drop_last):
    reference = take(BatchIterator(11, 4, seed=3, drop_last=drop_last), 12)
    for stop in (0, 1, 2, 3, 5, 8):
        it = BatchIterator(11, 4, seed=3, drop_last=drop_last)
        take(it, stop)
        state = json.loads(json.dumps(it.state_dict()))  # survives a checkpoint file
        resumed = BatchIterator(11, 4, seed=3, drop_last=drop_last)
        resumed.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(take(resumed, 12 - stop), reference[stop:]))
    with pytest.raises(ValueError, match="num_rows=11 but this iterator has 12"):
        BatchIterator(12, 4, seed=3, drop_last=drop_last).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=3 but this iterator has 4"):
        BatchIterator(11, 4, seed=4, drop_last=drop_last).load_state_dict(state)
