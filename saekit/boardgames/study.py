"""The board-game paper's study (Karvonen et al. 2024, papers.md §8) on a game model (the Othello-GPT
or the chess GPT): SAEs of several architectures and sparsities trained on the trained model and on a
randomly initialised model of the same shape (the paper's control), each scored against the board's
ground truth.

A study config is a run config (``[data]`` of kind "games" without a model, its ``game`` choosing
Othello or chess, ``[train]``, ``[[sae]]``) with a ``[study]`` table naming the two models. For each
model the SAEs train side by side in one engine run (``OUT/<trained|random>/``, resumable), then every
SAE is measured on held-out games (the positions and properties of :mod:`.study_boards`):

* ``coverage_board``: coverage of the blank-masked board properties, and ``coverage_legal`` (Othello:
  the 64 legal-move properties) or ``coverage_rules`` (chess: check, pin, castling rights, en passant)
  (:func:`saekit.boardgames.coverage`);
* ``reconstruction``: board reconstruction of the blank-masked board, as the paper reports it, latents
  labelled on the first half of the games and boards predicted on the second, with the paper's
  per-square rule (:func:`saekit.boardgames.board_reconstruction`);
* ``reconstruction_with_empty``: the same over every (square, class) property, empty squares included;
* L0 and FVU on the same positions.

Beside them, the baseline the paper's numbers sit next to: a linear probe per square on the same
activations, fitted on the first half and scored on the second with the F1 of the board properties it
predicts (:mod:`saekit.boardgames.probe`).

This module, study_boards and the report sit at the top of the stack (they train with the engine and
read models); the rest of ``saekit.boardgames`` stands on ``errors`` alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from saekit.atomic import write_text
from saekit.boardgames.board_metrics import board_reconstruction, coverage
from saekit.boardgames.probe import probe_board
from saekit.boardgames.study_boards import Board, board_of
from saekit.boardgames.study_report import write_study_report
from saekit.cli.run_config import (
    RunConfig,
    apply_overrides,
    build_saes,
    parse_with_models_table,
    read_config_file,
    sae_name,
    sae_spec,
    train_from_config,
)
from saekit.errors import ConfigError
from saekit.io.artifact import INDEX_FILE, load_suite, save_suite
from saekit.sae.base import SAE
from saekit.sources.model import ModelSource
from saekit.sources.spec import source_from_spec

MODELS = ("trained", "random")


@dataclass(frozen=True)
class StudyConfig:
    """The ``[study]`` table: the models and the held-out games."""

    model: str
    """The trained game model: the ``model/`` folder of a ``saekit games othello-model`` or ``chess-model`` run."""
    control: str | None = None
    """A randomly initialised model of the same shape (the paper's control); default: the same run's
    ``checkpoints/step-0``, its weights before training."""
    eval_games: int = 1000
    """Held-out games the SAEs are measured on (their complete games)."""
    eval_seed: int = 1
    """Seed of the held-out games; the model trains on seed 0."""

    def __post_init__(self) -> None:
        if isinstance(self.eval_games, bool) or not isinstance(self.eval_games, int) or self.eval_games < 4:
            raise ConfigError(f"study.eval_games must be an integer of at least 4, got {self.eval_games!r}")

    def models(self) -> dict[str, str]:
        control = self.control or str(Path(self.model).parent / "checkpoints" / "step-0")
        for name, folder in (("model", self.model), ("control", control)):
            if not (Path(folder) / "config.json").is_file():
                hint = "" if self.control or name == "model" else " (set study.control: the default is the run's checkpoints/step-0)"
                raise ConfigError(f"study.{name}: {folder} is not a model folder{hint}")
        return {"trained": self.model, "random": control}


class Study(NamedTuple):
    run: RunConfig
    study: StudyConfig
    raw: dict[str, Any]
    game_model: dict[str, Any]
    """The ``[game_model]`` table: settings of the game model ``saekit games study --train-model`` trains
    (fields of ``OthelloModelConfig`` or ``ChessModelConfig``, checked by the trainer); empty: its defaults."""

    @property
    def game(self) -> str:
        """``[data] game``: "othello" (the default) or "chess"."""
        return str(self.run.data.get("game", "othello"))


def load_study_config(path: str | Path, overrides: list[str] | None = None, *, models_exist: bool = True) -> Study:
    """Read and check a study config (errors name the file and the key); ``models_exist=False`` leaves
    the model folders unchecked, for a caller that trains the model first."""
    raw = apply_overrides(read_config_file(path), overrides or [])
    try:
        rest = dict(raw)
        game_model = rest.pop("game_model", {})
        if not isinstance(game_model, dict):
            raise ConfigError(f"game_model must be a table of the game model's settings, got {game_model!r}")
        study, run = parse_with_models_table(rest, "study", StudyConfig, "model = the trained game model's folder", ("games",))
        if models_exist:
            study.models()
        return Study(run, study, raw, game_model)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def run_study(s: Study, out: Path, *, resume: bool = False) -> list[dict[str, Any]]:
    """Train and measure (see the module docstring); returns one row per (model, SAE) and writes
    ``OUT/study.json``."""
    rows: list[dict[str, Any]] = []
    probes: dict[str, dict[str, float]] = {}
    for label, model in s.study.models().items():
        names, saes = _train(s, label, model, out / label, resume)
        source = _source(s, model, games=s.study.eval_games, seed=s.study.eval_seed)
        board = board_of(s.game, source)
        probes[label] = probe_board(board.acts[_site(saes)], board.state, board.split, classes=board.classes, empty=board.empty)._asdict()
        for name, sae in zip(names, saes):
            rows.append({"model": label, "name": name, **_measure(sae, board)})
            print(f"[study] {label} {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in rows[-1].items() if isinstance(v, float)))
    write_text(out / "study.json", json.dumps({"rows": rows, "probes": probes, "config": s.raw}, indent=2, default=str) + "\n")
    write_study_report(out, rows, probes, s.game)
    return rows


def _site(saes: list[SAE]) -> str:
    sites = {sae.metadata["site"] for sae in saes}
    if len(sites) != 1:
        raise ConfigError(f"a study's SAEs read one site, got {sorted(sites)}")
    return sites.pop()


def _source(s: Study, model: str, **games: int) -> ModelSource:
    source = source_from_spec({**s.run.data, "model": model, **({"n_games": games["games"], "seed": games["seed"]} if games else {})})
    assert isinstance(source, ModelSource)  # kind = "games" is a model source
    return source


def _train(s: Study, label: str, model: str, folder: Path, resume: bool) -> tuple[list[str], list[SAE]]:
    if resume and (folder / "saes" / INDEX_FILE).is_file():
        suite = load_suite(folder / "saes")
        wanted = [sae_name(i, sae_spec(i, table)) for i, table in enumerate(s.run.saes)]
        if list(suite) != wanted:
            missing = [n for n in wanted if n not in suite]
            raise ConfigError(
                f"{folder / 'saes'} holds the SAEs {list(suite)}, the config asks for {wanted}"
                + (f" (not trained there: {missing})" if missing else "")
                + "; a resumed study reuses its trained SAEs as they are: study the new ones into another folder"
            )
        return list(suite), list(suite.values())
    source = _source(s, model)
    built = build_saes(s.run.saes, source)
    record = {"config.json": json.dumps({"study_model": label, "model": model}, indent=2) + "\n"}
    result = train_from_config(s.run, built.saes, source, out_dir=folder, resume=resume, start_files=record)
    save_suite(result.saes, folder / "saes", names=built.names)
    return built.names, list(result.saes)


@torch.no_grad()
def _measure(sae: SAE, board: Board) -> dict[str, Any]:
    x = board.acts[sae.metadata["site"]].float()
    codes = sae.encode(x).float()
    fvu = float((x - sae.decode(codes)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    dense = codes.numpy()
    def reconstruction(props: np.ndarray, groups: np.ndarray) -> float:
        return board_reconstruction(dense[: board.split], props[: board.split], dense[board.split :], props[board.split :], groups=groups).best

    return {
        "architecture": sae.architecture,
        "l0": float((codes != 0).sum(1).float().mean()),
        "fvu": fvu,
        "coverage_board": coverage(dense, board.blank_masked).best,
        f"coverage_{board.extra_name}": coverage(dense, board.extra).best,
        "reconstruction": reconstruction(board.blank_masked, board.groups),
        "reconstruction_with_empty": reconstruction(board.state, board.state_groups),
    }
