"""What the app holds between requests: settings, metrics, and the engine once it is warm."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.metrics import Metrics
from service.runtime.bundle import Bundle
from service.runtime.collections import Collections
from service.runtime.engine import Engine
from service.settings import Settings


@dataclass
class AppState:
    """Mutable app-wide state; `engine` is None until the bundle is loaded and warmed up,
    `collections` until every collection is open and its index recovered."""

    settings: Settings
    metrics: Metrics
    bundle: Bundle | None = None
    engine: Engine | None = None
    collections: Collections | None = None
    load_error: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why the service cannot answer every route now; None when it can.

        `/ready` and the `simsvc_ready` gauge both read this, so they always agree."""
        if self.engine is None:
            return self.load_error or "loading"
        if self.collections is None:
            return self.load_error or "opening collections"
        return self.collections.store.problem
