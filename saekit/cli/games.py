"""`saekit games othello-model`: train an Othello-GPT on random games and report its legal-move accuracy."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from saekit.cli.args import add_run_arguments, doc_help, non_negative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    from saekit.boardgames.othello_model import OthelloModelConfig
    from saekit.strict import field_docs

    games = sub.add_parser("games", help="board-game models: train an Othello-GPT, run the board-game study")
    kinds = games.add_subparsers(dest="game_command", required=True)
    othello = kinds.add_parser("othello-model", help="train an Othello-GPT on random games (seeded, resumable)")
    othello.add_argument("--out", required=True, help="output folder: model/, checkpoints/step-<n>/, state/, accuracy.json")
    othello.add_argument("--resume", action="store_true", help="continue the run in --out (same settings)")
    othello.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    docs = field_docs(OthelloModelConfig)
    types = {"lr": float, "weight_decay": float, "warmup_steps": non_negative_int, "seed": non_negative_int, "eval_seed": non_negative_int}
    for field in dataclasses.fields(OthelloModelConfig):
        othello.add_argument(
            f"--{field.name.replace('_', '-')}", type=types.get(field.name, positive_int), default=field.default,
            help=doc_help(f"{docs.get(field.name, '')} (default {field.default})"),
        )  # fmt: skip
    othello.set_defaults(func=_cmd_othello_model)
    study = kinds.add_parser(
        "study", help="the board-game paper's study: SAEs on the Othello-GPT and its random init, coverage and board reconstruction"
    )
    add_run_arguments(
        study, config="study config: a run config with a [study] table (configs/othello-study.toml)", example="train.steps=500",
        resume="continue the study in the output folder",
    )  # fmt: skip
    study.set_defaults(func=_cmd_study)


def _cmd_study(args: argparse.Namespace) -> int:
    from saekit.boardgames.study import load_study_config, run_study

    study = load_study_config(args.config, args.set)
    out = Path(args.out) if args.out else study.run.out
    run_study(study, out, resume=args.resume)
    print((out / "study.md").read_text(encoding="utf-8"))
    print(f"table {out / 'study.md'}, plot {out / 'study.png'}, numbers {out / 'study.json'}")
    return 0


def _cmd_othello_model(args: argparse.Namespace) -> int:
    import torch

    from saekit.atomic import write_text
    from saekit.boardgames.othello_eval import legal_move_accuracy
    from saekit.boardgames.othello_games import random_games
    from saekit.boardgames.othello_model import OthelloModelConfig, build_model
    from saekit.boardgames.othello_train import train_othello_model
    from saekit.strict import from_dict, to_dict

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    values = {f.name: vars(args)[f.name] for f in dataclasses.fields(OthelloModelConfig)}
    config = from_dict(OthelloModelConfig, values, where="othello-model")
    out = Path(args.out)
    trained = train_othello_model(config, out, resume=args.resume)
    held_out = random_games(config.eval_games, config.eval_seed).moves
    result = {
        "trained": legal_move_accuracy(trained.model, held_out)._asdict(),
        "random_init": legal_move_accuracy(build_model(config).eval(), held_out)._asdict(),
        "eval_games": config.eval_games,
        "eval_seed": config.eval_seed,
        "final_loss": trained.losses[-1],
        "train_seconds_this_call": round(trained.seconds, 1),
        "parameters": sum(p.numel() for p in trained.model.parameters()),
        "config": to_dict(config),
    }
    write_text(out / "accuracy.json", json.dumps(result, indent=2) + "\n")
    trained_acc, control = result["trained"]["accuracy"], result["random_init"]["accuracy"]
    print(f"legal-move accuracy on {config.eval_games} held-out games: {trained_acc:.4f} (random init: {control:.4f})")
    print(f"model in {out / 'model'}; checkpoints in {out / 'checkpoints'}; numbers in {out / 'accuracy.json'}")
    return 0
