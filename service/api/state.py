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
        return self.engine is not None and self.collections is not None
