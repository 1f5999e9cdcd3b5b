"""Strict construction of frozen dataclass configs from plain mappings (TOML, YAML, JSON, CLI).

Unknown keys are an error that names the key, and every field's documentation is written once, as a
string literal under the field, and reused for `saekit ls` and CLI help.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from saekit.errors import ConfigError

T = TypeVar("T")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the string literal written just below it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert TOML/YAML/CLI scalars to the field's declared type, refusing lossy conversions."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    scalar = _SCALARS.get(annotation)
    return value if scalar is None else scalar(value, where)


def _coerce_union(value: Any, args: tuple[Any, ...], where: str) -> Any:
    """The first member of ``X | Y | None`` that takes ``value``; else the first member's complaint."""
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, where)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _as_int(value: Any, where: str) -> int:
    """An int, an integral float, or a string of one ("1e6", "4_096"); never a bool, and within the
    64-bit range every integer setting ends up in (seeds, counts, sizes)."""
    number: Any = value
    if isinstance(value, str):
        text = value.replace("_", "")
        try:
            number = int(text)  # exact, where float() would round a long integer
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                pass
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if not isinstance(number, int) or isinstance(number, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not -(2**63) <= number < 2**63:
        raise ConfigError(f"{where}: {value!r} is outside the 64-bit integer range")
    return number


def _as_float(value: Any, where: str) -> float:
    """A finite number (or a string of one): NaN and infinities are never a meaningful setting."""
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if not isinstance(number, (int, float)) or isinstance(number, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(number)
    except OverflowError:
        raise ConfigError(f"{where}: {value!r} is too large for a floating-point number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _as_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


_SCALARS: dict[Any, Any] = {bool: _as_bool, int: _as_int, float: _as_float, str: _as_str}


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str | None = None) -> T:
    """Build the frozen dataclass ``cls`` from ``data``; unknown or missing keys raise ConfigError."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of settings, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls)) if f.init}
    unknown = sorted(map(repr, set(data) - set(fields)))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; valid keys are {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # the config's own check: name the config, keep the error's class
        raise exc if str(exc).startswith(f"{where}") else type(exc)(f"{where}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def refuse_unused(config: Any, names: tuple[str, ...], because: str) -> None:
    """Raise ValueError (from a config's ``__post_init__``; :func:`from_dict` turns it into a ConfigError
    naming the config) if any field of ``names`` differs from its default: it would have no effect,
    ``because`` (e.g. "aux_coef is 0"). A setting that does nothing is an error, not a silent no-op."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    changed = [name for name in names if getattr(config, name) != defaults[name]]
    if changed:
        raise ValueError(f"{', '.join(changed)} {'has' if len(changed) == 1 else 'have'} no effect when {because}")


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, JSON-ready dict of a config dataclass (tuples become lists)."""
    return {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v) for f in dataclasses.fields(config)}
