"""Liveness, readiness, model information and the Prometheus scrape endpoint."""

from __future__ import annotations

import platform
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from service import __version__
from service.api.auth import ReadScope
from service.api.deps import EngineDep, StateDep
from service.api.responses import ORJSONResponse, errors
from service.runtime.bundle import Manifest
from service.runtime.engine import Engine

router = APIRouter(tags=["operations"])
metrics_router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive: the process answers (no model needed)."""
    return {"status": "ok"}


@router.get("/live")
async def live() -> dict[str, str]:
    """Alive: the process answers (no model needed)."""
    return {"status": "ok"}


class ReadyResponse(BaseModel):
    status: str
    reason: str | None = None


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "loading, or not able to serve"}},
)
async def ready(state: StateDep) -> ORJSONResponse:
    """Ready: the bundle is loaded, a warm-up batch ran and the collections are open."""
    reason = state.not_ready_reason()
    if reason is not None:
        return ORJSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
    return ORJSONResponse({"status": "ready"})


@router.get("/info", dependencies=[ReadScope], responses=errors(503))
async def info(state: StateDep, engine: EngineDep) -> dict[str, Any]:
    """The model, pooling, dims, whitening, head, prompts (and the one each use takes:
    default, query, document), limits and versions."""
    import onnxruntime

    settings = state.settings
    manifest = state.bundle.manifest if state.bundle else None
    whitening: dict[str, Any] = {"fitted": engine.whitening.fitted, "dims": engine.dims}
    auto = manifest.whitening.auto if manifest is not None else None
    if auto is not None and not auto.kept:
        whitening["note"] = (
            "identity transform: --whiten auto dropped the fitted whitening, which lowered "
            f"the cosine's Spearman on {auto.data}"
        )
    elif not engine.whitening.fitted:
        whitening["note"] = "identity transform: the bundle was built without --whiten-on"
    if manifest is not None:
        whitening.update(manifest.whitening.model_dump(exclude={"fitted"}))
    return {
        "model": engine.model_name,
        "pooling": engine.pooling,
        "poolings": list(engine.core.outputs),
        "dims": {"hidden": engine.core.dims, "output": engine.dims},
        "max_length": engine.core.max_length,
        "whitening": whitening,
        "head": (
            None
            if engine.head is None
            else {
                "kind": engine.head.kind,
                "calibration": engine.head.calibration.kind,
                "threshold": engine.threshold,
                **(manifest.head.model_dump() if manifest and manifest.head else {}),
            }
        ),
        "prompts": {
            "prompts": dict(engine.prompts.prompts),
            **engine.prompts.roles(),
        },
        "cross_encoder": _cross_info(engine, manifest),
        "reranker": _cross_info(engine, manifest, "reranker"),
        "rerank_model": (
            None
            if engine.ranker is None
            else {
                "part": "reranker" if engine.reranker is not None else "cross_encoder",
                "model": engine.ranker.model_name,
            }
        ),
        "bundle": None
        if manifest is None
        else {
            "sha": state.bundle.sha if state.bundle else "",
            "format_version": manifest.format_version,
            "opset": manifest.opset,
            "fusions": manifest.fusions,
            "quantization": manifest.quantization.model_dump() if manifest.quantization else None,
            "parity": {k: v.model_dump() for k, v in manifest.parity.items()},
            "evaluation": manifest.evaluation,
        },
        "limits": {
            "max_texts_per_request": settings.max_texts_per_request,
            "max_pairs_per_request": settings.max_pairs_per_request,
            "max_chars_per_text": settings.max_chars_per_text,
            "max_body_bytes": settings.max_body_bytes,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_batch_size": settings.max_batch_size,
            "max_queue_texts": settings.max_queue_texts,
            "max_documents_per_request": settings.max_documents_per_request,
            "max_ndjson_line_bytes": settings.max_ndjson_line_bytes,
            "max_search_k": settings.max_search_k,
            "max_rerank_texts": settings.max_rerank_texts,
            "cross_max_batch_tokens": settings.cross_max_batch_tokens,
            "cross_max_queue_pairs": settings.cross_max_queue_pairs,
        },
        "versions": {
            "simsvc": __version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }


def _cross_info(
    engine: Engine, manifest: Manifest | None, part: str = "cross"
) -> dict[str, Any] | None:
    """The cross-encoder (or the reranker): model, labels, max length, calibration, and its
    manifest section."""
    cross = engine.cross if part == "cross" else engine.reranker
    if cross is None:
        return None
    out: dict[str, Any] = {
        "model": cross.model_name,
        "labels": cross.labels,
        "max_length": cross.core.max_length,
        "calibration": {"kind": cross.calibration.kind},
        "threshold": cross.threshold,
    }
    info = None if manifest is None else getattr(manifest, part)
    if info is not None:
        out.update(info.model_dump(exclude={"source"}))
        out["source"] = info.source.model_dump()
    return out


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    """Prometheus text format."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
