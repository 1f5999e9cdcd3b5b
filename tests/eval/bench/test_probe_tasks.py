"""The sae-probes tasks read as files (a package laid out as the wheel lays it, made in the test, and
the installed package when present), texts made by a caller, and the refusals of each bad input."""

import csv
import importlib.util
import io
import sys

import pytest

from saekit.errors import ConfigError, DataError
from saekit.eval.bench import tasks
from saekit.eval.bench.tasks import list_tasks, load_task, make_task

zstandard = pytest.importorskip("zstandard", reason="reading sae-probes data needs zstandard (saekit[bench])")


@pytest.fixture(autouse=True)
def _fresh_table():
    tasks._binary_files.cache_clear()
    yield
    tasks._binary_files.cache_clear()


def _write_csv(path, header, rows):
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(header)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(text.getvalue().encode()))


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package named sae_probes with the wheel's data layout, shadowing any installed one."""
    pkg = tmp_path / "sae_probes"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('saekit must not import sae_probes')\n")
    master = [
        ["Binary Classification", "cleaned_data/1_colour.csv"],
        ["Continuous Data", "cleaned_data/2_year.csv"],
        ["Binary Classification", "cleaned_data/3_gone.csv"],
    ]
    _write_csv(pkg / "data" / "probing_datasets_MASTER.csv.zst", ["Data type", "Dataset save name"], master)
    rows = [["red apple", 3, "True"], ["blue sky", 3, "False"], ["red rose", 3, "True"], ["blue sea", 3, "False"]]
    _write_csv(pkg / "data" / "cleaned_data" / "1_colour.csv.zst", ["prompt", "prompt_len", "target"], rows)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return pkg


def test_binary_tasks_are_read_without_importing_the_package(fake_package):
    assert list_tasks() == ["1_colour", "3_gone"]
    task = load_task("1_colour")
    assert "sae_probes" not in sys.modules
    assert task.texts == ("red apple", "blue sky", "red rose", "blue sea")
    assert task.classes == ("False", "True") and task.labels == (1, 0, 1, 0)
    assert task.source.startswith("sae-probes")


def test_unknown_task_is_a_config_error_naming_it(fake_package):
    with pytest.raises(ConfigError, match=r"unknown sparse-probing task '1_color'.*2 tasks in sae-probes"):
        load_task("1_color")


def test_a_listed_dataset_missing_from_the_package_is_named(fake_package):
    with pytest.raises(DataError, match=r"task '3_gone': its dataset .*3_gone.csv.zst is missing"):
        load_task("3_gone")


def test_a_corrupt_dataset_is_a_data_error(fake_package):
    (fake_package / "data" / "cleaned_data" / "1_colour.csv.zst").write_bytes(b"not zstd at all")
    with pytest.raises(DataError, match=r"1_colour.csv.zst: not a zstd-compressed UTF-8 CSV"):
        load_task("1_colour")


def test_a_package_without_its_table_is_named(fake_package):
    (fake_package / "data" / "probing_datasets_MASTER.csv.zst").unlink()
    with pytest.raises(DataError, match="probing_datasets_MASTER.csv.zst is missing"):
        list_tasks()


def test_an_absent_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match=r"sae-probes package, which is not installed: pip install --no-deps sae-probes"):
        load_task("5_hist_fig_ismale")


@pytest.mark.parametrize(
    ("texts", "labels", "words"),
    [
        (["a", "b", "c"], ["x", "y", "z"], "exactly two label values"),
        (["a", "b"], ["x", "x"], "exactly two label values"),
        (["a", "  "], ["x", "y"], "text 1 is empty"),
        (["a", None], ["x", "y"], "text 1 is empty or not a string"),
        (["a"], ["x", "y"], "1 texts but 2 labels"),
    ],
)
def test_made_tasks_refuse_bad_texts_and_labels(texts, labels, words):
    with pytest.raises(DataError, match=words):
        make_task("mine", texts, labels)


def test_the_installed_package_ships_its_binary_tasks():
    if importlib.util.find_spec("sae_probes") is None:
        pytest.skip("sae-probes is not installed (make test installs it: pip install --no-deps sae-probes)")
    names = list_tasks()
    assert len(names) >= 100 and "5_hist_fig_ismale" in names
    task = load_task("154_athlete_sport_football")
    assert len(task.texts) > 1000 and set(task.labels) == {0, 1}
