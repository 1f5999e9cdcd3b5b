"""The public API: a short, sorted list, each name documented in the package docstring."""

import re

import saekit


def test_the_public_api_is_a_short_sorted_documented_list():
    names = saekit.__all__
    assert names == sorted(names) and len(names) == len(set(names)) <= 35
    documented = set(re.findall(r"``(\w+)``", saekit.__doc__ or ""))
    assert set(names) - {"__version__"} == documented
    for name in names:
        assert getattr(saekit, name) is not None


def test_train_result_is_exported_with_train():
    assert saekit.train.__annotations__["return"] in ("TrainResult", saekit.TrainResult)
