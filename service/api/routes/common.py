"""Helpers the routes share."""

from __future__ import annotations

from typing import Any

from service.runtime.types import Timings


def timing_headers(timings: Timings) -> dict[str, str]:
    """Per-stage timing headers in milliseconds, as text-embeddings-inference sends them."""
    return {
        "x-tokenization-time": f"{timings.tokenize * 1000:.3f}",
        "x-queue-time": f"{timings.queue * 1000:.3f}",
        "x-inference-time": f"{timings.inference * 1000:.3f}",
    }


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its `$defs` put in place: in an OpenAPI document, `#/$defs`
    would point at the document's root."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))
