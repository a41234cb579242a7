"""Helpers the routes share."""

from __future__ import annotations

from service.runtime.types import Timings


def timing_headers(timings: Timings) -> dict[str, str]:
    """Per-stage timing headers in milliseconds, as text-embeddings-inference sends them."""
    return {
        "x-tokenization-time": f"{timings.tokenize * 1000:.3f}",
        "x-queue-time": f"{timings.queue * 1000:.3f}",
        "x-inference-time": f"{timings.inference * 1000:.3f}",
    }
