"""Text files saekit did not write are read at a bounded cost, and every hostile input is a named error
of the caller's class: billion laughs, deep nesting, duplicate keys, non-text bytes, files that are
not regular files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saekit import bounded
from saekit.bounded import MAX_DEPTH, file_problem, parse_json, parse_toml, parse_yaml, read_bytes
from saekit.errors import ArtifactError, ConfigError

# 9 aliases per level over 9 levels: 9^9 = 387 million "lol" strings once expanded.
LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def test_yaml_aliases_are_refused_before_any_expansion():
    assert len(LAUGHS) < 700
    with pytest.raises(ConfigError, match=r"cfg is not valid YAML: aliases \(\*name\) are not allowed"):
        parse_yaml(LAUGHS, "cfg", ConfigError)


def test_a_yaml_anchor_without_alias_is_plain_yaml():
    assert parse_yaml("a: &x 1\nb: [1, 2]\n", "cfg", ConfigError) == {"a": 1, "b": [1, 2]}


@pytest.mark.parametrize(
    "parse, text",
    [
        (parse_json, "[" * 100_000 + "]" * 100_000),
        (parse_yaml, "[" * 100_000 + "]" * 100_000),
        (parse_toml, "a = " + "[" * 100_000 + "]" * 100_000),
        (parse_json, "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2)),  # within Python's stack, past ours
    ],
)
def test_deep_nesting_is_a_named_error(parse, text):
    with pytest.raises(ConfigError, match=f"cfg.*nests .*deeper than {MAX_DEPTH} levels"):
        parse(text, "cfg", ConfigError)


@pytest.mark.parametrize(
    "parse, text",
    [(parse_json, '{"train": {"steps": 1, "steps": 2}}'), (parse_yaml, "train:\n  steps: 1\n  steps: 2\n")],
)
def test_a_key_given_twice_is_refused(parse, text):
    with pytest.raises(ConfigError, match="cfg: key 'steps' is given twice"):
        parse(text, "cfg", ConfigError)


@pytest.mark.parametrize(
    "text, message",
    [
        ("1: 2\n", "key 1 at the top level is not a string"),
        ("sae:\n  - {null: 1}\n", "key None at sae.0 is not a string"),
        ("a: !!binary aGVsbG8=\n", "a holds a bytes, not a plain value"),
        ("a: !!set {x}\n", "a holds a set, not a plain value"),
        ("a: !!python/object:os.system ls\n", "not valid YAML: could not determine a constructor"),
        ("--- 1\n--- 2\n", "not valid YAML: expected a single document"),
    ],
)
def test_yaml_keys_and_values_must_be_plain(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_yaml(text, "cfg", ConfigError)


def test_the_caller_error_class_is_raised():
    with pytest.raises(ArtifactError, match="cfg.json is not valid JSON"):
        parse_json("{", "cfg.json", ArtifactError)


def test_size_is_bounded_before_reading_on(tmp_path: Path):
    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * 101)
    assert read_bytes(path, 101, ConfigError) == b"#" * 101
    with pytest.raises(ConfigError, match=r"config file .*big.toml is larger than 100 bytes"):
        read_bytes(path, 100, ConfigError, "config file")


def test_files_that_are_not_regular_files_are_named(tmp_path: Path):
    loop, broken, folder, fifo = tmp_path / "loop", tmp_path / "broken", tmp_path / "folder", tmp_path / "fifo"
    loop.symlink_to(loop)
    broken.symlink_to(tmp_path / "nowhere")
    folder.mkdir()
    os.mkfifo(fifo)  # reading it would block forever
    assert file_problem(tmp_path / "nowhere") == "does not exist"
    assert file_problem(broken) == "is a broken link"
    assert file_problem(folder) == "is a folder, not a file"
    assert "symbolic links" in (file_problem(loop) or "")
    with pytest.raises(ConfigError, match=r"fifo is not a regular file \(a pipe, socket or device\)"):
        read_bytes(fifo, 100, ConfigError)


def test_nan_and_infinity_are_refused_where_the_reader_asks(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": NaN, "b": [Infinity]}')
    assert bounded.read_json(path, 1000, ArtifactError)["b"] == [float("inf")]  # Python writes them
    with pytest.raises(ArtifactError, match=r"x.json is not valid JSON: NaN is not a JSON number"):
        bounded.read_json(path, 1000, ArtifactError, allow_nan=False)
