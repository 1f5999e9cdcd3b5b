"""Strict config construction: lossy, out-of-range and non-finite values are refused by the key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from saekit.errors import ConfigError
from saekit.strict import from_dict


@dataclass(frozen=True)
class Settings:
    count: int = 1
    rate: float = 0.5
    flag: bool = False

    def __post_init__(self) -> None:
        if self.count <= 0:
            raise ConfigError(f"count must be positive, got {self.count}")
        if self.rate > 1e300:
            raise OverflowError("rate overflows the schedule")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"count": True}, r"s.count: expected an integer, got True"),
        ({"count": "abc"}, r"s.count: expected an integer, got 'abc'"),
        ({"count": 1.5}, r"s.count: expected an integer, got 1.5"),
        ({"count": float("nan")}, r"s.count: expected an integer, got nan"),
        ({"count": "1e400"}, r"s.count: expected an integer, got '1e400'"),
        ({"count": 2**63}, r"s.count: 9223372036854775808 is outside the 64-bit integer range"),
        ({"count": 1e30}, r"s.count: 1e\+30 is outside the 64-bit integer range"),
        ({"rate": float("nan")}, r"s.rate: expected a finite number, got nan"),
        ({"rate": "inf"}, r"s.rate: expected a finite number, got 'inf'"),
        ({"rate": 10**400}, r"s.rate: 1000.* is too large for a floating-point number"),
        ({"rate": True}, r"s.rate: expected a number, got True"),
        ({"flag": 1}, r"s.flag: expected true or false, got 1"),
        ({"count": 0}, r"^s: count must be positive, got 0"),
        ({"rate": 1e301}, r"^s: rate overflows the schedule"),
        ({1: 2, "x": 3}, r"s: unknown keys 'x', 1; valid keys are count, rate, flag"),
    ],
)
def test_bad_values_are_named_by_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Settings, data, where="s")


def test_integers_are_taken_exactly():
    assert from_dict(Settings, {"count": "12345678901234567891"[:19]}).count == 1234567890123456789
    assert from_dict(Settings, {"count": "4_096", "rate": "1e-3", "flag": "true"}) == Settings(4096, 1e-3, True)
    assert from_dict(Settings, {"count": 1e6}).count == 1_000_000
