"""Text files saekit did not write (run configs, cfg.json, provenance.json), read at a cost bounded
before anything is parsed, into plain data whose shape is checked once.

* A file is read only when it is a regular file (not a folder, a FIFO that would block, a device, a
  symlink loop), and never past ``limit`` bytes: a config or a cfg.json is small, so a large one is
  refused by its size, not by running out of memory while parsing it.
* YAML aliases (``*name``, and merge keys, which use them) are refused: each alias may repeat a whole
  subtree, so a few hundred bytes of nested aliases expand to gigabytes ("billion laughs").
* A key given twice in one mapping is refused: parsers disagree on which one wins, so the same file
  would mean two things.
* Nesting deeper than :data:`MAX_DEPTH` is refused (also when the parser itself runs out of stack).
* Mapping keys must be strings and values plain: str, int, float, bool, None, lists, mappings, and
  the dates and times TOML and YAML read.

Every refusal is the caller's error class (ConfigError for configs, ArtifactError for saved folders)
and names the file, and the key where there is one.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError

from saekit.errors import SaekitError

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings read (a run config nests 3 deep, a cfg.json 2)."""

_LEAVES = (str, int, float, bool, type(None), datetime.date, datetime.time)
"""Scalars a file may hold (datetime.datetime is a datetime.date)."""


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a regular file ("does not exist", "is a folder", ...), or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken link" if path.is_symlink() else "does not exist"
    except OSError as exc:  # a symlink loop, a permission denied on a parent folder, a name too long
        return f"cannot be opened: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe, socket or device)"
    return None


def read_bytes(path: Path, limit: int, error: type[SaekitError], label: str = "") -> bytes:
    """The bytes of the regular file ``path``, refused by name when it holds more than ``limit``.
    Messages start with ``label`` ("config file") before the path."""
    where = f"{label} {path}".strip()
    if problem := file_problem(path):
        raise error(f"{where} {problem}")
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{where} is larger than {limit:,} bytes, far more than such a file holds; refusing to parse it")
    return data


def decode_utf8(data: bytes, where: str, error: type[SaekitError]) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not UTF-8 text: byte {exc.start} is {data[exc.start : exc.start + 1]!r}") from None


def read_json(path: Path, limit: int, error: type[SaekitError], *, allow_nan: bool = True) -> Any:
    """Plain data from the JSON file ``path`` (:func:`read_bytes`, :func:`decode_utf8`, :func:`parse_json`)."""
    return parse_json(decode_utf8(read_bytes(path, limit, error), str(path), error), str(path), error, allow_nan=allow_nan)


def parse_json(text: str, where: str, error: type[SaekitError], *, allow_nan: bool = True) -> Any:
    """Plain data from JSON text; duplicate keys, deep nesting and non-plain values are refused, and
    without ``allow_nan`` so are ``NaN`` and ``Infinity`` (which Python writes but JSON does not have)."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=None if allow_nan else _no_constant)
    except _NotANumber as exc:
        raise error(f"{where} is not valid JSON: {exc.name} is not a JSON number") from None
    except _DuplicateKey as exc:
        raise error(f"{where}: key {exc.key!r} is given twice in one object") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise error(f"{where} nests lists or objects deeper than {MAX_DEPTH} levels") from None
    check_plain(data, where, error)
    return data


def parse_toml(text: str, where: str, error: type[SaekitError]) -> Any:
    """Plain data from TOML text (TOML itself refuses duplicate keys)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where} is not valid TOML: {exc}") from None
    except RecursionError:
        raise error(f"{where} nests lists or tables deeper than {MAX_DEPTH} levels") from None
    check_plain(data, where, error)
    return data


def parse_yaml(text: str, where: str, error: type[SaekitError]) -> Any:
    """Plain data from YAML text: one document, safe tags only, no aliases, no duplicate keys."""
    try:
        data = yaml.load(text, Loader=_PlainLoader)  # a SafeLoader: no Python objects are built
    except _DuplicateKey as exc:
        raise error(f"{where}: key {exc.key!r} is given twice in one mapping") from None
    except yaml.YAMLError as exc:
        raise error(f"{where} is not valid YAML: {exc}") from None
    except RecursionError:
        raise error(f"{where} nests lists or mappings deeper than {MAX_DEPTH} levels") from None
    check_plain(data, where, error)
    return data


def check_plain(data: Any, where: str, error: type[SaekitError]) -> None:
    """Refuse nesting deeper than MAX_DEPTH, keys that are not strings and values that are not plain,
    naming the dotted path of the offence (``sae.0.k``). Iterative, so any depth is refused safely."""
    for path, depth, value in _walk(data):
        if depth > MAX_DEPTH:
            raise error(f"{where}: {_dotted(path[:3])}... nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise error(f"{where}: key {bad[0]!r} at {_dotted(path)} is not a string")
        elif not isinstance(value, (list, *_LEAVES)):
            raise error(f"{where}: {_dotted(path)} holds a {type(value).__name__}, not a plain value")


def _walk(data: Any) -> Iterator[tuple[tuple[str, ...], int, Any]]:
    todo: list[tuple[tuple[str, ...], int, Any]] = [((), 0, data)]
    while todo:
        path, depth, value = todo.pop()
        yield path, depth, value
        if depth >= MAX_DEPTH + 1:
            continue
        if isinstance(value, dict):
            todo.extend(((*path, str(k)), depth + 1, v) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend(((*path, str(i)), depth + 1, v) for i, v in enumerate(value))


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or "the top level"


class _NotANumber(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_constant(name: str) -> Any:
    raise _NotANumber(name)


class _DuplicateKey(Exception):
    def __init__(self, key: Any) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _PlainLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader without aliases and without duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ComposerError(
                None, None, "aliases (*name) are not allowed: write the value out where it is used", mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        if len(mapping) != len(node.value):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise _DuplicateKey(key)
                seen.add(key)
        return mapping
