"""The checks of the validation boundary that need the settings.

Request bodies are parsed by `service.api.routing` (strict UTF-8 without lone surrogates,
bounded nesting) and typed by `service.api.schemas`; what depends on a setting is checked
here, once, before anything reaches the tokenizer, the store or a filter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from service.api.schemas import Scalar
from service.errors import ValidationError
from service.settings import Settings


def check_filter(where: Mapping[str, Scalar], settings: Settings) -> dict[str, Scalar] | None:
    """A search filter within the settings' size limits, with values SQLite can compare."""
    if len(where) > settings.max_filter_keys:
        raise ValidationError(
            f"filter: {len(where)} keys; the limit is {settings.max_filter_keys} keys"
        )
    out: dict[str, Scalar] = {}
    for key, value in where.items():
        if len(key) > settings.max_filter_key_chars:
            raise ValidationError(
                f"filter: key {key[:40]!r}... has {len(key)} characters; the limit is "
                f"{settings.max_filter_key_chars}"
            )
        if isinstance(value, str) and len(value) > settings.max_filter_value_chars:
            raise ValidationError(
                f"filter: the value of {key!r} has {len(value)} characters; the limit is "
                f"{settings.max_filter_value_chars}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"filter: the value of {key!r} must be finite")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            value = float(value)  # a JSON number beyond int64: SQLite compares it as a float
        out[key] = value
    return out or None


def check_index_params(kind: str, params: Mapping[str, Any], settings: Settings) -> dict[str, int]:
    """Index parameters within the settings' upper bounds (the schema has the hard ranges)."""
    bounds = settings.index_bounds()
    for name, value in params.items():
        if value > bounds[name]:
            raise ValidationError(
                f"index.params.{name}: {kind} parameter {name} is {value}; the limit is "
                f"{bounds[name]} (setting {kind}_max_{name})",
                param=f"index.params.{name}",
            )
    return dict(params)
