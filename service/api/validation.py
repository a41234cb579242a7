"""The checks of the validation boundary that need the settings.

Request bodies are parsed by `service.api.routing` (strict UTF-8 without lone surrogates,
bounded nesting) and typed by `service.api.schemas`; what depends on a setting is checked
here, once, before anything reaches the tokenizer, the store or a filter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.errors import ValidationError
from service.runtime.store.filters import FilterLimits
from service.settings import Settings


def filter_limits(settings: Settings) -> FilterLimits:
    """The settings' size limits of a search filter (`service.runtime.store.filters` checks)."""
    return FilterLimits(
        settings.max_filter_keys, settings.max_filter_key_chars, settings.max_filter_value_chars
    )


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
