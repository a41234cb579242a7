"""FastAPI dependencies, as `Annotated` aliases the routes declare.

All are `async def`: FastAPI runs a plain `def` dependency in a worker thread, a hop that
costs more than these lookups themselves on every request.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from service.api.middleware import abandon_on_disconnect
from service.api.state import AppState
from service.errors import NotReadyError
from service.runtime.collections import Collections
from service.runtime.engine import Engine


async def get_state(request: Request) -> AppState:
    """The app's state object."""
    return cast(AppState, request.app.state.simsvc)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_engine(state: StateDep) -> Engine:
    """The engine, or 503 while the model is loading."""
    if state.engine is None:
        reason = state.load_error or "the model is loading and warming up"
        raise NotReadyError(f"not ready: {reason}")
    return state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


async def get_collections(state: StateDep) -> Collections:
    """The collections, or 503 while they are being opened and recovered."""
    if state.collections is None:
        reason = state.load_error or "the collections are being opened"
        raise NotReadyError(f"not ready: {reason}")
    return state.collections


CollectionsDep = Annotated[Collections, Depends(get_collections)]


async def mark_abandonable(request: Request) -> None:
    """The route's work is dropped when its client disconnects (it writes nothing)."""
    abandon_on_disconnect(request.scope)


Abandonable = Depends(mark_abandonable)
