"""`saekit games`: write random games, train an Othello-GPT or a chess GPT, run the board-game study."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saekit.cli.args import add_run_arguments, doc_help, non_negative_int, positive_int

if TYPE_CHECKING:
    from torch import nn

    from saekit.boardgames.chess_model import ChessModelConfig
    from saekit.boardgames.game_train import GameTask
    from saekit.boardgames.othello_eval import LegalMoveAccuracy
    from saekit.boardgames.othello_model import OthelloModelConfig
    from saekit.boardgames.study import Study

_TYPES = {"lr": float, "weight_decay": float, "warmup_steps": non_negative_int, "seed": non_negative_int, "eval_seed": non_negative_int, "player": str}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from saekit.boardgames.chess_model import ChessModelConfig
    from saekit.boardgames.othello_model import OthelloModelConfig

    games = sub.add_parser("games", help="board games: write random games, train an Othello-GPT or a chess GPT, run the board-game study")
    kinds = games.add_subparsers(dest="game_command", required=True)
    _add_generate(kinds)
    othello = kinds.add_parser("othello-model", help="train an Othello-GPT on random games (seeded, resumable)")
    _add_model_arguments(othello, OthelloModelConfig)
    othello.set_defaults(func=_cmd_othello_model)
    chess = kinds.add_parser("chess-model", help="train a character-level chess GPT on seeded games (seeded, resumable)")
    _add_model_arguments(chess, ChessModelConfig)
    chess.set_defaults(func=_cmd_chess_model)
    study = kinds.add_parser(
        "study", help="the board-game paper's study: SAEs on a game model and its random init, coverage and board reconstruction"
    )
    add_run_arguments(
        study, config="study config: a run config with a [study] table (configs/othello-study.toml, configs/chess-study.toml)",
        example="train.steps=500", resume="continue the study (and, with --train-model, the model's training) in the output folder",
    )  # fmt: skip
    study.add_argument(
        "--train-model", action="store_true",
        help="first train the game model when study.model (RUN/model) is missing: RUN becomes a `saekit games othello-model` "
        "(or chess-model) run with the config's [game_model] settings (default: the trainer's), resumed with --resume",
    )  # fmt: skip
    study.set_defaults(func=_cmd_study)


def _add_generate(kinds: argparse._SubParsersAction) -> None:
    from saekit.boardgames.generate import GAMES, GenerateConfig
    from saekit.boardgames.pgn import PLAYERS

    gen = kinds.add_parser("generate", help="write N seeded random games to a file (Othello: .npy of squares; chess: one game string a line)")
    gen.add_argument("game", choices=GAMES)
    gen.add_argument("--n", type=positive_int, required=True, help="games to write")
    gen.add_argument("--out", required=True, help="the file (never overwritten); blocks go to <out>.parts/ until it is complete")
    gen.add_argument("--seed", type=non_negative_int, default=0, help="seed of the games (default 0)")
    default = GenerateConfig("chess", 1)
    gen.add_argument("--player", choices=PLAYERS, default=default.player, help=f"chess: who plays both sides (default {default.player})")
    gen.add_argument("--max-plies", type=positive_int, default=default.max_plies, help=f"chess: plies at most per game (default {default.max_plies})")
    gen.set_defaults(func=_cmd_generate)


def _add_model_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    from saekit.strict import field_docs

    parser.add_argument("--out", required=True, help="output folder: model/, checkpoints/step-<n>/, state/, accuracy.json")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (same settings)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=_TYPES.get(field.name, positive_int), default=field.default,
            help=doc_help(f"{docs.get(field.name, '')} (default {field.default})"),
        )  # fmt: skip


def _cmd_generate(args: argparse.Namespace) -> int:
    from saekit.boardgames.generate import GenerateConfig, generate_games
    from saekit.strict import from_dict

    values = {"game": args.game, "n": args.n, "seed": args.seed, "player": args.player, "max_plies": args.max_plies}
    config = from_dict(GenerateConfig, values, where="generate")
    done = generate_games(config, args.out)
    rate = done.generated / done.seconds if done.generated and done.seconds > 0 else float("nan")
    print(f"{done.games} {config.game} games in {done.path} ({done.generated} generated now, {done.seconds:.1f} s, {rate:,.0f} games/s)")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from saekit.boardgames.study import load_study_config, run_study

    study = load_study_config(args.config, args.set, models_exist=not args.train_model)
    if args.train_model:
        _train_study_model(study, args.resume)
        study = load_study_config(args.config, args.set)
    out = Path(args.out) if args.out else study.run.out
    run_study(study, out, resume=args.resume)
    print((out / "study.md").read_text(encoding="utf-8"))
    print(f"table {out / 'study.md'}, plot {out / 'study.png'}, numbers {out / 'study.json'}")
    return 0


def _train_study_model(study: Study, resume: bool) -> None:
    """``--train-model``: train the study's game model into the run folder above ``study.model`` with
    the default settings, unless its ``model/`` is there already."""
    from saekit.boardgames.chess_model import ChessModelConfig
    from saekit.boardgames.othello_model import OthelloModelConfig
    from saekit.errors import ConfigError

    model = Path(study.study.model)
    if model.name != "model":
        raise ConfigError(f"--train-model trains a run whose model/ folder study.model names (RUN/model); got study.model = {str(model)!r}")
    if (model / "config.json").is_file():
        print(f"[study] the game model {model} is there: not trained again")
        return
    cls, command = (ChessModelConfig, _cmd_chess_model) if study.game == "chess" else (OthelloModelConfig, _cmd_othello_model)
    settings = {f.name: f.default for f in dataclasses.fields(cls)}
    unknown = sorted(set(study.game_model) - set(settings))
    if unknown:
        raise ConfigError(f"game_model: unknown setting(s) {', '.join(unknown)} of the {study.game} model; known: {', '.join(settings)}")
    settings.update(study.game_model)
    print(f"[study] training the {study.game} model into {model.parent}{' (resumed)' if resume else ''}")
    command(argparse.Namespace(out=str(model.parent), resume=resume, threads=None, **settings))


def _cmd_othello_model(args: argparse.Namespace) -> int:
    from saekit.boardgames.othello_eval import legal_move_accuracy
    from saekit.boardgames.othello_games import random_games
    from saekit.boardgames.othello_model import OthelloModelConfig, build_model
    from saekit.boardgames.othello_train import othello_task

    config = _config(args, OthelloModelConfig, "othello-model")
    held_out = random_games(config.eval_games, config.eval_seed).moves
    return _train_and_score(args, othello_task(config), config, lambda model: legal_move_accuracy(model, held_out), build_model(config).eval())


def _cmd_chess_model(args: argparse.Namespace) -> int:
    from saekit.boardgames.chess_eval import chess_legal_move_accuracy
    from saekit.boardgames.chess_model import ChessModelConfig, build_chess_model
    from saekit.boardgames.chess_train import chess_task
    from saekit.boardgames.pgn import random_chess_games

    config = _config(args, ChessModelConfig, "chess-model")
    held_out = random_chess_games(config.eval_games, config.eval_seed, player=config.player, max_plies=config.max_plies)
    score = lambda model: chess_legal_move_accuracy(model, held_out, config.context)  # noqa: E731
    return _train_and_score(args, chess_task(config), config, score, build_chess_model(config).eval())


def _config(args: argparse.Namespace, cls: type, where: str) -> Any:
    import torch

    from saekit.strict import from_dict

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return from_dict(cls, {f.name: vars(args)[f.name] for f in dataclasses.fields(cls)}, where=where)


def _train_and_score(
    args: argparse.Namespace, task: GameTask, evaluated: OthelloModelConfig | ChessModelConfig,
    score: Callable[[nn.Module], LegalMoveAccuracy], control: nn.Module,
) -> int:  # fmt: skip
    """Train ``task`` (of the config ``evaluated``) into --out, then write and print the legal-move
    accuracy of the trained model and of its random initialisation (``control``) on the held-out games
    ``score`` reads."""
    from saekit.atomic import write_text
    from saekit.boardgames.game_train import train_game_model
    from saekit.strict import to_dict

    out, config = Path(args.out), evaluated
    trained = train_game_model(task, out, resume=args.resume)
    result = {
        "trained": score(trained.model)._asdict(),
        "random_init": score(control)._asdict(),
        "eval_games": config.eval_games,
        "eval_seed": config.eval_seed,
        "final_loss": trained.losses[-1],
        "train_seconds_this_call": round(trained.seconds, 1),
        "parameters": sum(p.numel() for p in trained.model.parameters()),
        "config": to_dict(config),
    }
    write_text(out / "accuracy.json", json.dumps(result, indent=2) + "\n")
    trained_acc, random_acc = result["trained"]["accuracy"], result["random_init"]["accuracy"]
    print(f"legal-move accuracy on {config.eval_games} held-out games: {trained_acc:.4f} (random init: {random_acc:.4f})")
    print(f"model in {out / 'model'}; checkpoints in {out / 'checkpoints'}; numbers in {out / 'accuracy.json'}")
    return 0
