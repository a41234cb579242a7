"""The one filter check both stores rely on: limits, value types, numbers they compare."""

from __future__ import annotations

import math

import pytest

from service.errors import ValidationError
from service.runtime.store.filters import FilterLimits, check_filter, matches_nothing


def test_a_valid_filter_passes_unchanged_and_an_empty_one_is_none() -> None:
    where = {"lang": "en", "n": 3, "x": 0.5, "ok": True, "none": None}
    assert check_filter(where) == where
    assert check_filter({}) is None and check_filter(None) is None


def test_integers_beyond_int64_become_floats_and_huge_ones_are_refused() -> None:
    assert check_filter({"n": 2**63}) == {"n": float(2**63)}
    assert check_filter({"n": -(2**63)}) == {"n": -(2**63)}
    with pytest.raises(ValidationError, match="out of range"):
        check_filter({"n": 10**400})


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_are_refused(value: float) -> None:
    with pytest.raises(ValidationError, match="must be finite"):
        check_filter({"x": value})


def test_values_that_are_not_scalars_are_refused() -> None:
    with pytest.raises(ValidationError, match="string, number, boolean or null"):
        check_filter({"x": [1, 2]})


def test_the_limits_apply_when_given() -> None:
    limits = FilterLimits(max_keys=2, max_key_chars=3, max_value_chars=4)
    with pytest.raises(ValidationError, match="3 keys; the limit is 2"):
        check_filter({"a": 1, "b": 2, "c": 3}, limits)
    with pytest.raises(ValidationError, match="the limit is 3"):
        check_filter({"abcd": 1}, limits)
    with pytest.raises(ValidationError, match="has 5 characters; the limit is 4"):
        check_filter({"a": "abcde"}, limits)
    assert check_filter({"abcd": "abcde"}) == {"abcd": "abcde"}  # no limits by default


def test_a_nul_in_a_key_or_value_matches_nothing() -> None:
    assert matches_nothing({"a\x00": 1}) and matches_nothing({"a": "x\x00"})
    assert not matches_nothing({"a": "x"}) and not matches_nothing(None)
