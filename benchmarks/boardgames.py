"""Time saekit.boardgames: Othello games per second (generation, replay, properties), chess games per
second, and the two metrics with their peak traced memory on an SAE-sized problem (default: 4,096
latents x 100,000 positions x 192 properties, L0 64).

    .venv/bin/python benchmarks/boardgames.py [--othello-games 200000] [--chess-games 100]
        [--positions 100000] [--latents 4096] [--properties 192] [--l0 64]

Peak memory is what tracemalloc sees allocated by the metric (numpy and scipy buffers) beyond the
codes and properties, which are made before tracing starts.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from saekit.boardgames import board_reconstruction, coverage, othello_properties, random_games, replay
from saekit.boardgames.chess_properties import chess_properties
from saekit.boardgames.pgn import random_chess_games


def timed(label: str, count: int, unit: str, call):
    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    print(f"{label:<44} {count / seconds:>12,.0f} {unit}/s   ({seconds:.2f} s for {count:,})")
    return out


def othello(n_games: int) -> None:
    games = timed("othello random_games", n_games, "games", lambda: random_games(n_games, seed=0))
    print(f"    mean length {games.lengths.mean():.2f} moves; {np.mean(games.lengths < 60):.2%} end before 60")
    sample = games.moves[: min(n_games, 20_000)]
    timed("othello replay", len(sample), "games", lambda: replay(sample))
    timed("othello_properties (context 59)", len(sample), "games", lambda: othello_properties(sample))


def chess(n_games: int) -> None:
    for player in ("random", "greedy"):
        games = timed(
            f"chess random_chess_games ({player})", n_games, "games", lambda p=player: random_chess_games(n_games, 0, player=p)
        )
        print(f"    mean length {np.mean([len(g) for g in games]):,.0f} characters")
    cut = [g[:256] for g in games]
    timed("chess_properties (all chars, first 256)", len(cut), "games", lambda: chess_properties(cut))


def problem(positions: int, latents: int, properties: int, l0: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse codes (``l0`` random latents per position) whose first latents are noisy property detectors."""
    rng = np.random.default_rng(seed)
    props = rng.random((positions, properties)) < 0.3
    codes = np.zeros((positions, latents), dtype=np.float32)
    rows = np.repeat(np.arange(positions), l0)
    codes[rows, rng.integers(0, latents, positions * l0)] = rng.exponential(1.0, positions * l0)
    detectors = min(properties, latents)
    noisy = props[:, :detectors] ^ (rng.random((positions, detectors)) < 0.02)
    codes[:, :detectors] = noisy * rng.uniform(0.5, 1.5, (positions, detectors))
    return codes, props


def traced(label: str, call):
    tracemalloc.start()
    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{label:<44} {seconds:8.1f} s   peak {peak / 2**20:8.1f} MiB")
    return out


def metrics(positions: int, latents: int, properties: int, l0: int) -> None:
    codes, props = problem(positions, latents, properties, l0)
    print(f"metrics on {positions:,} positions x {latents:,} latents x {properties} properties, L0 {l0}")
    print(f"    (codes {codes.nbytes / 2**20:,.0f} MiB and properties {props.nbytes / 2**20:,.0f} MiB not counted)")
    result = traced("coverage", lambda: coverage(codes, props))
    print(f"    coverage {result.best:.3f} at t={result.best_threshold}")
    half = positions // 2
    recon = traced(
        "board_reconstruction (half fit, half test)",
        lambda: board_reconstruction(codes[:half], props[:half], codes[half:], props[half:]),
    )
    print(f"    reconstruction F1 {recon.best:.3f} at t={recon.best_threshold}; labels {recon.labels.tolist()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--othello-games", type=int, default=200_000)
    ap.add_argument("--chess-games", type=int, default=100)
    ap.add_argument("--positions", type=int, default=100_000)
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--properties", type=int, default=192)
    ap.add_argument("--l0", type=int, default=64)
    args = ap.parse_args()
    othello(args.othello_games)
    chess(args.chess_games)
    metrics(args.positions, args.latents, args.properties, args.l0)


if __name__ == "__main__":
    main()
