"""The static export: the server's site as files, in its URL layout, written as one folder: the
overview, and per SAE its latent list, the one latent page and the store files that page reads
(:mod:`saekit.browser.page_data`): a handful of files per SAE, whatever its number of latents.
The latent page fetches its files, which browsers refuse to pages opened from ``file://``: serve
the folder with any static HTTP server (``python -m http.server -d DIR``).

An export never destroys what it did not write. Its folder is used only when it is absent, empty, or
a previous export: a folder holding the marker :data:`MARKER` (which names each SAE and the files
written for it, so the exact set of files that export wrote) and nothing besides those files. Anything else
is refused with a ConfigError naming the folder, before any page is rendered. The new export is
built in a hidden sibling folder and swapped in whole by :func:`saekit.atomic.replace_folder`: the
folder holds the old export or the new one, never a mix, and the marker is there exactly when the
export it describes is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from saekit.atomic import replace_folder
from saekit.bounded import read_json
from saekit.browser.meta import MAX_JSON_BYTES
from saekit.browser.page_data import FILES, store_files
from saekit.browser.pages import latent_list_page, latent_page, overview_page
from saekit.browser.store import Browser
from saekit.errors import ArtifactError, ConfigError

MARKER = "saekit-export.json"
"""The file that makes a folder a saekit export: {"format": 2, "saes": {name: [its files]}}."""
_MARKER_FORMAT = 2
_PAGES = ("index.html", "latent.html")
_ALLOWED = frozenset((*_PAGES, *FILES))
"""The only file names an SAE's folder of an export may hold."""


def is_plain_name(name: object) -> bool:
    """Whether ``name`` can be one folder's name: a non-empty string, not ``.``/``..``, no separator or NUL."""
    return isinstance(name, str) and name not in ("", ".", "..") and not set(name) & {"/", "\\", "\0"}


def check_folder_names(browser: Browser) -> None:
    """A ConfigError naming the SAE names of ``browser`` that cannot each name one folder of an export."""
    bad = [name for name in browser.saes if not is_plain_name(name)]
    if bad:
        raise ConfigError(f"SAE name(s) {', '.join(map(repr, bad))} cannot name a folder of the export")


def check_export_target(out: str | os.PathLike[str]) -> Path:
    """``out`` as a Path when an export may be written there (see the module docstring); else a
    ConfigError naming the folder and what is in the way (an ArtifactError for an unreadable marker)."""
    out = Path(out)
    if out.is_symlink():
        raise ConfigError(f"export folder {out} is a symbolic link; pass the folder it points to")
    if not out.exists():
        return out
    if not out.is_dir():
        raise ConfigError(f"export folder {out} is a file, not a folder")
    present = _entries(out)
    if not present:
        return out
    if MARKER not in present:
        raise ConfigError(
            f"export folder {out} is not empty and is not a saekit browser export (it has no {MARKER}); "
            f"refusing to replace what is in it ({_some(present)}): export into a new or empty folder"
        )
    foreign = present - _export_paths(_read_marker(out / MARKER))
    if foreign:
        raise ConfigError(
            f"export folder {out} holds a saekit browser export and also files that export did not write "
            f"({_some(foreign)}); refusing to delete them: move them out or export into another folder"
        )
    return out


def export_site(browser: Browser, out: str | os.PathLike[str], *, progress: bool = False) -> Path:
    """Write every page as a plain HTML file under ``out`` (the URL layout of the server), replacing
    ``out`` as a whole; returns ``out``. Refused as :func:`check_export_target` says."""
    out = check_export_target(out)
    check_folder_names(browser)

    def fill(tmp: Path) -> None:
        (tmp / "index.html").write_text(overview_page(browser.title, browser.saes), encoding="utf-8")
        written: dict[str, list[str]] = {}
        for name, data in tqdm(browser.saes.items(), desc="export", disable=not progress, leave=False):
            files = {
                "index.html": latent_list_page(browser.title, data).encode(),
                "latent.html": latent_page(browser.title, data).encode(),
                **store_files(browser.title, data),
            }  # fmt: skip
            (tmp / name).mkdir()
            for file, content in files.items():
                (tmp / name / file).write_bytes(content)
            written[name] = sorted(files)
        marker = {"format": _MARKER_FORMAT, "saes": written}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")

    replace_folder(out, fill)
    return out


def _entries(folder: Path) -> set[str]:
    """Every file, folder and link under ``folder``, as paths relative to it (links not followed)."""
    found = set()

    def refuse(exc: OSError) -> None:
        raise ConfigError(f"cannot list the export folder {folder}: {exc}") from exc

    for here, dirs, files in os.walk(folder, onerror=refuse):
        rel = Path(here).relative_to(folder)
        found.update((rel / name).as_posix() for name in dirs + files)
    return found


def _read_marker(path: Path) -> dict[str, list[str]]:
    """SAE name -> the files written for it, from an export's marker."""
    raw = read_json(path, MAX_JSON_BYTES, ArtifactError)
    saes = raw.get("saes") if isinstance(raw, dict) and raw.get("format") == _MARKER_FORMAT else None
    if not isinstance(saes, dict) or not all(
        is_plain_name(k) and isinstance(v, list) and all(isinstance(f, str) and f in _ALLOWED for f in v)
        for k, v in saes.items()
    ):
        raise ArtifactError(f"{path} is not a saekit export marker (format {_MARKER_FORMAT}, SAE names and their files)")
    return saes


def _export_paths(saes: dict[str, list[str]]) -> set[str]:
    """Every path an export of SAEs with these files writes."""
    paths = {MARKER, "index.html"}
    for name, files in saes.items():
        paths.add(name)
        paths.update(f"{name}/{file}" for file in files)
    return paths


def _some(paths: set[str], shown: int = 3) -> str:
    first = sorted(paths)[:shown]
    return ", ".join(first) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")
