"""The one check of a search filter, for both stores: within the size limits the service
sets, with values every store compares exactly (strings, booleans, null, finite numbers in
float64 range; integers beyond int64 become floats, as SQLite would compare them).

The API applies it with the settings' limits before anything is encoded; the orchestration
applies it again without limits for callers that do not come through HTTP. Both answer the
same, so the second pass is a no-op on a filter the first one passed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from service.errors import ValidationError
from service.runtime.store.base import Filter, Scalar


@dataclass(frozen=True)
class FilterLimits:
    """Size limits of a filter (None: unlimited)."""

    max_keys: int | None = None
    max_key_chars: int | None = None
    max_value_chars: int | None = None


NO_LIMITS = FilterLimits()


def check_filter(
    where: Mapping[str, object] | None, limits: FilterLimits = NO_LIMITS
) -> Filter | None:
    """The filter as the stores take it (None when empty), or a `ValidationError`."""
    where = where or {}
    if limits.max_keys is not None and len(where) > limits.max_keys:
        raise ValidationError(f"filter: {len(where)} keys; the limit is {limits.max_keys} keys")
    out: dict[str, Scalar] = {}
    for key, value in where.items():
        if limits.max_key_chars is not None and len(key) > limits.max_key_chars:
            raise ValidationError(
                f"filter: key {key[:40]!r}... has {len(key)} characters; the limit is "
                f"{limits.max_key_chars}"
            )
        if isinstance(value, str):
            if limits.max_value_chars is not None and len(value) > limits.max_value_chars:
                raise ValidationError(
                    f"filter: the value of {key!r} has {len(value)} characters; the limit is "
                    f"{limits.max_value_chars}"
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValidationError(f"filter: the value of {key!r} must be finite")
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:
                try:
                    value = float(value)  # beyond int64: compared as a float, as SQLite does
                except OverflowError:
                    raise ValidationError(f"filter: the value of {key!r} is out of range") from None
        elif not (value is None or isinstance(value, bool)):
            raise ValidationError(
                f"filter: the value of {key!r} must be a string, number, boolean or null"
            )
        out[key] = value
    return out or None


def matches_nothing(where: Filter | None) -> bool:
    """A filter no stored document can match: a key or value holding NUL (U+0000), which no
    store keeps (documents with one are refused), and PostgreSQL cannot even compare."""
    return any(
        "\x00" in key or (isinstance(value, str) and "\x00" in value)
        for key, value in (where or {}).items()
    )
