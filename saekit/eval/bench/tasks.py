"""Binary probing tasks: the labelled texts shipped inside the ``sae-probes`` package (read as files, never
through its own loader, which needs TransformerLens), or texts and labels a caller makes.

A task's name is the package's numbered tag (``5_hist_fig_ismale``): its master table lists every
dataset, and the binary ones are read from ``data/cleaned_data/<name>.csv.zst`` (zstd-compressed CSV with
``prompt`` and ``target`` columns). The two target values sort into labels 0 and 1, as scikit-learn's
``LabelEncoder`` (which sae-probes uses) orders them.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from saekit.errors import ConfigError, DataError

PACKAGE = "sae-probes"
INSTALL_HINT = "pip install --no-deps sae-probes zstandard (or saekit[bench]; --no-deps keeps TransformerLens out)"
MASTER = "probing_datasets_MASTER.csv.zst"
MAX_BYTES = 64 * 2**20
"""A decompressed dataset larger than this is refused (the largest shipped is under 20 MB)."""

DEFAULT_TASKS = (
    "5_hist_fig_ismale",
    "21_headline_istrump",
    "92_glue_sst2",
    "126_art_type_book",
    "154_athlete_sport_football",
)
"""Short-text tasks of different kinds (people, headlines, sentiment, titles, athletes)."""


@dataclass(frozen=True)
class ProbeTask:
    """Texts with binary labels: ``labels[i]`` is 1 when ``texts[i]`` belongs to ``classes[1]``."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, str]
    source: str = "made by the caller"
    """Where the texts come from (the sae-probes package and its version, for its tasks)."""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(f"task {self.name!r}: {len(self.texts)} texts but {len(self.labels)} labels")
        if set(self.labels) - {0, 1}:
            raise DataError(f"task {self.name!r}: labels must be 0 or 1, got {sorted(set(self.labels) - {0, 1})[:5]}")
        for i, text in enumerate(self.texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"task {self.name!r}: text {i} is empty or not a string")


def make_task(name: str, texts: Sequence[str], labels: Sequence[object], source: str = "made by the caller") -> ProbeTask:
    """A task from texts and any two distinct label values (sorted as strings: the larger one is class 1)."""
    values = sorted({str(v) for v in labels})
    if len(values) != 2:
        raise DataError(f"task {name!r}: a binary task needs exactly two label values, got {values[:10]}")
    return ProbeTask(name, tuple(texts), tuple(values.index(str(v)) for v in labels), (values[0], values[1]), source)


def data_dir() -> Path:
    """The ``data`` folder of the installed sae-probes package, found without importing it."""
    spec = importlib.util.find_spec("sae_probes")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the sparse-probing datasets come from the {PACKAGE} package, which is not installed: {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (folder / MASTER).is_file():
        raise DataError(f"{folder / MASTER} is missing: the installed {PACKAGE} package has no dataset table; reinstall it")
    return folder


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        import zstandard
    except ImportError:
        raise DataError(f"reading {path.name} needs the zstandard package: {INSTALL_HINT}") from None
    try:
        with path.open("rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
            raw = reader.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise DataError(f"{path}: more than {MAX_BYTES} bytes once decompressed; refused")
        return list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    except (zstandard.ZstdError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a zstd-compressed UTF-8 CSV ({exc})") from None


@cache
def _binary_files() -> dict[str, Path]:
    folder = data_dir()
    files: dict[str, Path] = {}
    for row in _read_csv(folder / MASTER):
        saved = row.get("Dataset save name") or ""
        if row.get("Data type") == "Binary Classification" and saved:
            files[Path(saved).name.removesuffix(".csv")] = folder / f"{saved}.zst"
    return files


def list_tasks() -> list[str]:
    """The binary tasks of the installed sae-probes package, in its table's order."""
    return list(_binary_files())


def load_task(name: str) -> ProbeTask:
    """The task ``name`` (a numbered tag such as ``5_hist_fig_ismale``) read from the sae-probes data."""
    files = _binary_files()
    if name not in files:
        near = [t for t in files if name.lower() in t.lower()][:5] or list(files)[:5]
        raise ConfigError(f"unknown sparse-probing task {name!r}: {len(files)} tasks in {PACKAGE}, e.g. {', '.join(near)}")
    path = files[name]
    if not path.is_file():
        raise DataError(f"task {name!r}: its dataset {path} is missing from the installed {PACKAGE} package")
    rows = _read_csv(path)
    if not rows or "prompt" not in rows[0] or "target" not in rows[0]:
        raise DataError(f"{path}: expected the columns prompt and target")
    return make_task(name, [r["prompt"] for r in rows], [r["target"] for r in rows], source=f"{PACKAGE} {_version()}")


def _version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "(version unknown)"
