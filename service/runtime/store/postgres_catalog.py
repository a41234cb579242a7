"""The PostgreSQL store's catalog reads and writes: a collection's row, its whitening
versions (cached per replica: a version never changes once written), and transaction-local
settings. Shared by the store, its writer and its rebuilder, below all three."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.errors import NotFoundError
from service.runtime.store.base import WhiteningState
from service.runtime.store.postgres_schema import COLUMNS, Row
from service.runtime.whitening import Whitening


async def set_local(conn: Any, key: str, value: object) -> None:
    """A setting for the rest of the transaction."""
    await conn.execute("SELECT set_config(%s, %s, true)", (key, str(value)))


async def catalog_row(conn: Any, name: str, lock: str = "") -> Row:
    """A collection's catalog row (`lock`: e.g. FOR UPDATE)."""
    cur = await conn.execute(
        f"SELECT {COLUMNS} FROM simsvc_collections WHERE name = %s {lock}", (name,)
    )
    found = await cur.fetchone()
    if found is None:
        raise NotFoundError(f"no collection named {name!r}")
    return Row.parse(found)


async def insert_whitening(conn: Any, cid: int, state: WhiteningState) -> None:
    """Store a new whitening version of collection `cid`."""
    t = state.transform
    await conn.execute(
        "INSERT INTO simsvc_whitenings (collection, version, source, documents, dims_in, "
        "dims_out, mu, w) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            cid,
            state.version,
            state.source,
            state.documents,
            t.dims_in,
            t.dims_out,
            None if t.mu is None else np.ascontiguousarray(t.mu, np.float32).tobytes(),
            None if t.w is None else np.ascontiguousarray(t.w, np.float32).tobytes(),
        ),
    )


class Whitenings:
    """Whitening versions read from the database, cached by (collection id, version)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], WhiteningState] = {}

    async def get(self, conn: Any, cid: int, version: int) -> WhiteningState:
        """A whitening version (cached: a version never changes once written)."""
        key = (cid, version)
        state = self._cache.get(key)
        if state is None:
            cur = await conn.execute(
                "SELECT source, documents, dims_in, dims_out, mu, w FROM simsvc_whitenings "
                "WHERE collection = %s AND version = %s",
                key,
            )
            found = await cur.fetchone()
            if found is None:
                raise NotFoundError(f"collection {cid} has no whitening version {version}")
            source, documents, dims_in, dims_out, mu, w = found
            if w is None:
                transform = Whitening.identity(int(dims_in))
            else:
                transform = Whitening(
                    int(dims_in),
                    np.frombuffer(mu, dtype=np.float32).copy(),
                    np.frombuffer(w, dtype=np.float32).reshape(int(dims_in), int(dims_out)).copy(),
                )
            state = WhiteningState(transform, version, source, int(documents))
            self._cache[key] = state
        return state
