import json
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch

from saekit.analysis.store import load_result, save_result
from saekit.errors import ArtifactError


class Pair(NamedTuple):
    a: torch.Tensor
    b: float


@dataclass
class Result:
    pairs: list[Pair]
    name: str


def _saved(tmp_path):
    return save_result(Result([Pair(torch.ones(3), 0.5)], "x"), tmp_path / "r")


def test_a_result_round_trips(tmp_path):
    back = load_result(Result, _saved(tmp_path))
    assert back.name == "x" and torch.equal(back.pairs[0].a, torch.ones(3)) and back.pairs[0].b == 0.5


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.pop("name"), r"the top level lacks the field\(s\) name"),
        (lambda f: f["pairs"][0].pop("a"), r"'pairs.0' lacks the field\(s\) a"),
        (lambda f: f["pairs"].__setitem__(0, [1, 2]), r"'pairs.0' should be a table of fields, got list"),
        (lambda f: f["pairs"][0].__setitem__("a", 3), r"field 'pairs.0.a' should be a tensor, got int"),
        (lambda f: f["pairs"][0].__setitem__("a", {"__tensor__": "elsewhere"}), r"tensor 'elsewhere' is not in arrays.safetensors"),
    ],
)
def test_an_edited_result_is_refused_with_the_field_named(tmp_path, edit, message):
    folder = _saved(tmp_path)
    payload = json.loads((folder / "result.json").read_text())
    edit(payload["fields"])
    (folder / "result.json").write_text(json.dumps(payload))
    with pytest.raises(ArtifactError, match=rf"result.json does not hold a Result: {message}"):
        load_result(Result, folder)


def test_a_folder_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ArtifactError, match=r"cannot write .*a-file/r/arrays.safetensors: Not a directory \(ENOTDIR\)"):
        save_result(Result([Pair(torch.ones(3), 0.5)], "x"), tmp_path / "a-file" / "r")
