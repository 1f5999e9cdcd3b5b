"""Which sample the browser shows an SAE on: a text corpus, or, for an SAE trained on a board-game model,
held-out games of the same source.

An SAE's ``provenance.json`` records its training data; a ``kind = "games"`` source writes ``data.games``
(the game, the games' seed and count, for chess the player) and ``data.model`` (the model's folder).
Such an SAE is shown on ``games`` complete games of seed ``game_seed`` (1 by default: the game models
train on seed 0, and the study measures on seed 1), one position per token, none skipped. The text
settings (corpus, tokens, context size, split, seed, skipped positions) have no meaning there and are
refused by name when set; ``games`` is refused for an SAE of a text model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.bounded import read_json
from saekit.browser.meta import MAX_JSON_BYTES
from saekit.errors import ArtifactError, ConfigError

TEXT_SETTINGS: dict[str, str | None] = {"corpus": "--corpus", "n_tokens": "--tokens", "context_size": "--context-size", "split": "--split", "seed": None, "skip_positions": "--skip-positions"}
"""The BrowserConfig settings of a text sample, and their ``saekit browse`` flags (None: no flag)."""
DEFAULT_GAMES = 300
"""Games drawn when the browser is not told how many (Othello: up to 300 x 59 positions)."""


@dataclass(frozen=True)
class GameSource:
    """What the SAEs' games were drawn from: ``game`` ("othello" or "chess"), the chess ``player``, and
    the game model's folder (None when the provenance names none)."""

    game: str
    player: str
    model: str | None


def game_source(folders: dict[str, Path]) -> GameSource | None:
    """The GameSource the SAEs of ``folders`` were trained on; None when they were trained on text. SAEs
    of different games, or of games and of text, are a ConfigError naming them."""
    found = {name: _of(folder) for name, folder in folders.items()}
    kinds = {name: (s.game, s.player) if s is not None else None for name, s in found.items()}
    if len(set(kinds.values())) > 1:
        described = ", ".join(f"{name}: {k[0] + ' games' if k else 'text'}" for name, k in kinds.items())
        raise ConfigError(f"the SAEs were trained on different data ({described}); browse them one kind at a time")
    return next(iter(found.values()))


def _of(folder: Path) -> GameSource | None:
    path = folder / "provenance.json"
    if not path.exists():
        return None  # no provenance (an SAE made elsewhere): a text SAE, as before
    raw = read_json(path, MAX_JSON_BYTES, ArtifactError)  # one that is there but broken is named, not taken for text
    if not isinstance(raw, dict) or not isinstance(raw.get("data", {}), dict):
        raise ArtifactError(f"{path}: expected a JSON object whose 'data' is an object (what saekit writes); the file is damaged")
    data = raw.get("data", {})
    games = data.get("games")
    if games is None:
        return None
    if not isinstance(games, dict) or games.get("game") not in ("othello", "chess"):
        raise ArtifactError(f"{folder / 'provenance.json'}: data.games must name the game (othello or chess), got {games!r}")
    player = games.get("player", "random")
    model = data.get("model")
    return GameSource(games["game"], player if isinstance(player, str) else "random", model if isinstance(model, str) else None)


def check_sample(source: GameSource | None, game_settings: dict[str, Any], text_settings: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Refuse the text settings that differ from their ``defaults`` for a game SAE, and the game
    settings (``games``, ``game_seed``) for a text SAE."""
    if source is None:
        given = [f"--{k.replace('_', '-')} ({k})" for k, v in game_settings.items() if v != defaults[k]]
        if given:
            raise ConfigError(f"{', '.join(given)} is for an SAE trained on a board-game model; these SAEs were trained on text")
        return
    given = [k if TEXT_SETTINGS[k] is None else f"{TEXT_SETTINGS[k]} ({k})" for k, v in text_settings.items() if v != defaults[k]]
    if given:
        raise ConfigError(
            f"the SAEs were trained on {source.game} games and are shown on held-out games, so the text setting(s) "
            f"{', '.join(given)} make no sense; leave them out (--games N sets how many games)"
        )


def game_tokens_of(source: GameSource, games: int, seed: int, tokenizer: Any) -> Any:
    """int64 [complete games, context]: the held-out games' tokens for the model of ``tokenizer``."""
    from saekit.sources.games import GamesConfig, game_tokens

    player = source.player if source.game == "chess" else "random"
    return game_tokens(GamesConfig(game=source.game, n_games=games, seed=seed, player=player), tokenizer)  # type: ignore[arg-type]
