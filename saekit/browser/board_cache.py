"""The board panel's data in an SAE's ``browser-cache`` (beside the other store files, written in the same
atomic folder swap by :func:`saekit.browser.store.save_data`):

    boards.bin    one :func:`saekit.browser.boards.record_dtype` record per latent (the page reads these bytes)
    boards.json   the game, the property names the records index, the positions per latent

A cache can come from elsewhere, so :func:`read_boards` checks everything the page indexes with (a best
property, a row, a square, a piece) against the cache's own sizes; a mismatch is an ArtifactError
naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from saekit.bounded import file_problem, read_bytes, read_json
from saekit.browser.boards import GAMES, Boards, record_dtype
from saekit.errors import ArtifactError

BOARDS, BOARDS_META = "boards.bin", "boards.json"
_NAME = re.compile(r"[a-z0-9_]{1,40}")
_PIECE_LIMIT = {"othello": 2, "chess": 12}
"""The largest square value of each game (Othello: white; chess: the last of the 13 piece classes)."""


def write_boards(folder: Path, boards: Boards) -> None:
    """Write ``boards`` into the (temporary, not yet swapped in) cache folder ``folder``."""
    (folder / BOARDS).write_bytes(boards.records.tobytes())
    meta = {"game": boards.game, "properties": list(boards.names), "positions": int(boards.records["rows"].shape[1])}
    (folder / BOARDS_META).write_text(json.dumps(meta), encoding="utf-8")


def read_boards(cache: Path, d_sae: int, n_rows: int) -> Boards | None:
    """The Boards cached in ``cache`` for an SAE of ``d_sae`` latents over ``n_rows`` positions, checked;
    None when the cache has none (an SAE of a text model)."""
    path = cache / BOARDS_META
    if not path.exists():
        return None
    meta = read_json(path, 1 << 20, ArtifactError)
    game, names, positions = (meta.get(k) for k in ("game", "properties", "positions")) if isinstance(meta, dict) else (None,) * 3
    if game not in GAMES or not isinstance(positions, int) or isinstance(positions, bool) or not 1 <= positions <= 64:
        raise ArtifactError(f"{path} must name a game ({', '.join(GAMES)}) and a number of positions (1 to 64)")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in names):
        raise ArtifactError(f"{path}: properties must be a non-empty list of property names (a-z, 0-9, _)")
    dtype = record_dtype(positions)
    records_path = cache / BOARDS
    found = records_path.stat().st_size if file_problem(records_path) is None else None
    if found is not None and found != d_sae * dtype.itemsize:
        raise ArtifactError(
            f"{records_path} holds {found:,} bytes, not the {d_sae:,} records of {dtype.itemsize} bytes its {BOARDS_META} "
            f"describes; delete {cache} to rebuild it"
        )
    raw = read_bytes(records_path, d_sae * dtype.itemsize, ArtifactError, "browser cache file")
    records = np.frombuffer(raw, dtype=dtype, count=d_sae)
    problem = _problem(records, game, len(names), n_rows)
    if problem:
        raise ArtifactError(f"{records_path} does not match its {BOARDS_META}: {problem}; delete {cache} to rebuild it")
    return Boards(game, tuple(names), records)


def _problem(records: np.ndarray, game: str, n_names: int, n_rows: int) -> str | None:
    """What in ``records`` a page could not show; None if nothing."""
    bounded = (("best", -1, n_names - 1), ("rows", -1, n_rows - 1), ("squares", 0, _PIECE_LIMIT[game]), ("played", -1, 63), ("first_to_move", 0, 1))
    for name, low, high in bounded:
        values = records[name]
        if values.size and (int(values.min()) < low or int(values.max()) > high):
            return f"{name} holds values outside {low}..{high}"
    for name in ("f1", "threshold"):
        values = records[name]
        if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
            return f"{name} holds a value that is not a number in [0, 1]"
    return None
