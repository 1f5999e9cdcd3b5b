"""What every command's arguments share: number types that refuse impossible values at parse time, and
the refusal of options that the chosen mode would ignore (an unused setting is an error, never a no-op)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from saekit.errors import ConfigError


def int64(text: str) -> int:
    """An argparse type: an integer in the 64-bit range torch and numpy take (seeds)."""
    return _int_in(text, -(2**63), 2**63 - 1, "a 64-bit integer")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (counts: tokens, steps, sizes)."""
    return _int_in(text, 1, 2**63 - 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    return _int_in(text, 0, 2**63 - 1, "an integer of 0 or more")


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 meaning any free one."""
    return _int_in(text, 0, 65535, "a port number in 0..65535")


def add_run_arguments(parser: argparse.ArgumentParser, *, config: str, example: str, resume: str) -> None:
    """The arguments of every command that runs a config file: the file, ``--set`` overrides, ``--out``
    and ``--resume`` (``saekit train``, ``saekit track``, ``saekit games study``)."""
    parser.add_argument("config", help=config)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"override a config value, e.g. {example}")
    parser.add_argument("--out", help="output folder (default: the config's `out`)")
    parser.add_argument("--resume", action="store_true", help=resume)


def doc_help(text: str) -> str:
    """A field's documentation as argparse help: argparse formats help with ``%``, so a literal one
    ("1% of games") is doubled."""
    return text.replace("%", "%%")


def _int_in(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def refuse_unused(args: argparse.Namespace, parser: argparse.ArgumentParser, names: Sequence[str], why: str) -> None:
    """Raise if any option ``names`` (destinations) was set to other than its default: ``why`` says when
    they are unused, e.g. "with --data"."""
    values = vars(args)
    given = [f"--{n.replace('_', '-')}" for n in names if values[n] != parser.get_default(n)]
    if given:
        raise ConfigError(f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect {why}; leave {'it' if len(given) == 1 else 'them'} out")
