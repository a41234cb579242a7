"""`create_app(settings)`: the FastAPI app, its lifespan and its routes. Engines, stores
and collections are built from the settings by `service.options`.

The lifespan verifies the bundle (a bad bundle stops the start with a clear error), then
loads the ONNX session and runs a warm-up batch in the background, while the collections
are opened and their indexes recovered: `/health` answers at once, `/ready` turns 200 when
the engine is warm and the collections are open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from service import __version__
from service.api import handlers
from service.api.auth import KeyRing
from service.api.deps import mark_abandonable
from service.api.middleware import CLIENT_CLOSED, RequestMiddleware
from service.api.openapi import install_docs, install_openapi
from service.api.responses import ORJSONResponse
from service.api.routes import collections, embeddings, health, rerank, similarity, tei
from service.api.state import AppState
from service.errors import BundleError
from service.metrics import Metrics
from service.options import engine_from_settings, make_collections
from service.runtime.bundle import Bundle, load_bundle
from service.runtime.collections import Collections
from service.runtime.engine import Engine
from service.runtime.index import INDEX_KINDS
from service.runtime.index import set_threads as set_index_threads
from service.runtime.search import SEARCH_MODES
from service.settings import Settings

log = logging.getLogger("simsvc")

EngineFactory = Callable[[Settings, Metrics], Engine]


def _publish_bundle(metrics: Metrics, bundle: Bundle) -> None:
    m = bundle.manifest
    metrics.model_info.info(
        {
            "model": m.source.model,
            "pooling": m.pooling,
            "bundle_sha": bundle.sha,
            "dims": str(m.dims.output),
        }
    )
    if m.whitening.anisotropy_before:
        metrics.anisotropy.labels(stage="raw").set(m.whitening.anisotropy_before["mean_cosine"])
    if m.whitening.anisotropy_after and m.whitening.fitted:  # not a whitening auto dropped
        metrics.anisotropy.labels(stage="whitened").set(m.whitening.anisotropy_after["mean_cosine"])


async def _open_collections(state: AppState, colls: Collections) -> None:
    """Open every collection and recover its index from its snapshot and store."""
    try:
        await colls.open()
    except Exception as exc:
        state.load_error = f"collections: {type(exc).__name__}: {exc}"
        log.exception("collections failed to open")
        return
    state.collections = colls
    log.info("collections open: %s", ", ".join(await colls.names()) or "none")


async def _start_engine(state: AppState, factory: EngineFactory | None) -> None:
    try:
        if factory is not None:
            engine = await asyncio.to_thread(factory, state.settings, state.metrics)
        else:
            assert state.bundle is not None
            engine = await asyncio.to_thread(
                engine_from_settings, state.settings, state.bundle, state.metrics
            )
        engine.start()
        if state.settings.warmup:
            await engine.warmup()
    except Exception as exc:  # noqa: BLE001 - reported by /ready and the log
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("model failed to load: %s", state.load_error)
        return
    if state.bundle is None:  # an injected engine: describe it from the engine itself
        state.metrics.model_info.info(
            {
                "model": engine.model_name,
                "pooling": engine.pooling,
                "bundle_sha": "none",
                "dims": str(engine.dims),
            }
        )
    state.metrics.queue_capacity.set(state.settings.max_queue_texts)
    if engine.cross is not None:
        state.metrics.cross.queue_capacity.set(state.settings.cross_max_queue_pairs)
    state.metrics.queue_work_limit.set(state.settings.max_queue_seconds)
    state.engine = engine
    log.info("ready: model %s, pooling %s, %d dims", engine.model_name, engine.pooling, engine.dims)


REBUILD_REASONS = ("recover", "reconfigure", "refit", "tombstones", "train", "repair", "lexical")
"""The reasons the collections report index rebuilds with."""


def known_request_labels(app: FastAPI, keys: bool) -> list[tuple[str, str, str]]:
    """(route, method, status) of every answer a route can give: the statuses it documents
    (401 and 403 only when keys are configured), 500, 499 where a client that goes away
    abandons the request, and 404 for unmatched paths."""
    labels: list[tuple[str, str, str]] = []
    for route in iter_route_contexts(app.routes):
        if not route.methods or not route.path:
            continue
        statuses = {str(s) for s in getattr(route, "responses", None) or {}}
        statuses |= {str(getattr(route, "status_code", None) or 200), "500"}
        if not keys:
            statuses -= {"401", "403"}
        dependencies = getattr(route, "dependencies", None) or []
        if any(d.dependency is mark_abandonable for d in dependencies):
            statuses.add(str(CLIENT_CLOSED))
        labels += [(route.path, m, s) for m in sorted(route.methods) for s in sorted(statuses)]
    for method in ("GET", "POST", "PUT", "DELETE"):
        labels.append(("unmatched", method, "404"))
        if keys:
            labels.append(("unmatched", method, "401"))
    return labels


def create_app(settings: Settings, *, engine_factory: EngineFactory | None = None) -> FastAPI:
    """The FastAPI app for these settings; `engine_factory` replaces the bundle (tests)."""
    metrics = Metrics()
    state = AppState(settings=settings, metrics=metrics)
    metrics.ready.set_function(lambda: float(state.not_ready_reason() is None))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine_factory is None:
            if settings.bundle is None:
                raise BundleError(
                    "no model bundle: set SIMSVC_BUNDLE (or --bundle), or run `simsvc serve` "
                    "without one to build the default bundle"
                )
            state.bundle = await asyncio.to_thread(load_bundle, settings.bundle)
            _publish_bundle(metrics, state.bundle)
        loader = asyncio.create_task(_start_engine(state, engine_factory))
        set_index_threads(settings.index_threads)
        colls = make_collections(settings, metrics)
        opener = asyncio.create_task(_open_collections(state, colls))
        try:
            yield
        finally:
            loader.cancel()
            await asyncio.wait([opener])
            if state.collections is not None:
                # Before the engine stops: in-flight uploads still need it to finish.
                await state.collections.close()
                state.collections = None
            if state.engine is not None:
                await asyncio.to_thread(state.engine.stop)

    app = FastAPI(
        title="simsvc",
        version=__version__,
        summary="Semantic similarity on BERT: scores, embeddings, search.",
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.simsvc = state
    handlers.install(app)
    routers = (
        similarity.router,
        rerank.router,
        embeddings.router,
        tei.router,
        collections.router,
        health.router,
    )
    for router in routers:
        app.include_router(router)
    if settings.metrics_port is None:  # else `simsvc serve` exposes them on their own port
        app.include_router(health.metrics_router)
    install_docs(app)
    install_openapi(app, state)
    metrics.prime(
        known_request_labels(app, keys=bool(settings.api_keys)),
        handlers.STATUS_BY_ERROR_TYPE,
        index_kinds=(*INDEX_KINDS, "exact", "lexical"),
        rebuild_reasons=REBUILD_REASONS,
        search_modes=SEARCH_MODES,
    )
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        keys=KeyRing(settings.api_keys),
        streams=collections.is_document_stream,
    )
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.main:create_app_from_env`."""
    return create_app(Settings())
