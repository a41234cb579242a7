"""The PostgreSQL store's connections: options, the pool, its health probe, and database
failures as service errors.

The store, its writer and its rebuilder all borrow connections through one `PostgresPool`,
so this module sits below them and imports none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any

from service.errors import ConflictError, ValidationError
from service.runtime.store.base import StoreUnavailableError
from service.runtime.store.postgres_schema import STAGING

log = logging.getLogger("simsvc.collections")


@dataclass(frozen=True)
class PostgresOptions:
    """Connection and policy settings of the PostgreSQL store (all settings)."""

    url: str
    pool_min: int = 1
    pool_max: int = 10
    connect_timeout_s: float = 5.0
    pool_timeout_s: float = 10.0
    statement_timeout_s: float = 30.0
    maintenance_timeout_s: float = 3600.0
    health_interval_s: float = 2.0
    ivf_min_documents: int = 1000
    ivf_retrain_growth: float = 4.0
    copy_chunk: int = 2048

    def connect_timeout(self) -> int:
        """libpq's connect timeout: whole seconds, at least one."""
        return max(1, round(self.connect_timeout_s))

    def maintenance_ms(self) -> str:
        """The statement timeout of rebuilds and drops, as `statement_timeout` reads it."""
        return str(round(self.maintenance_timeout_s * 1000))


class PostgresPool:
    """The connection pool and whether the database is reachable (`problem`)."""

    def __init__(self, options: PostgresOptions) -> None:
        self.options = options
        self._pool: Any = None
        self._problem: str | None = "connecting to the database"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._health: asyncio.Task[None] | None = None

    @property
    def problem(self) -> str | None:
        return self._problem

    def spawn(self, aw: Awaitable[Any]) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def open(self) -> None:
        """Migrate and open the pool; a database not reachable yet is retried in the
        background (the service starts and `/ready` says why it is not ready)."""
        try:
            await self._prepare()
        except Exception as exc:  # noqa: BLE001 - reported by /ready, retried by the probe
            self._down(exc)
        self._health = asyncio.create_task(self._probe())

    async def _prepare(self) -> None:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        from service.runtime.store.postgres_schema import migrate

        async with await psycopg.AsyncConnection.connect(
            self.options.url, autocommit=True, connect_timeout=self.options.connect_timeout()
        ) as conn:
            version = await migrate(conn)
        pool = AsyncConnectionPool(
            self.options.url,
            min_size=self.options.pool_min,
            max_size=self.options.pool_max,
            timeout=self.options.pool_timeout_s,
            kwargs={"autocommit": True, "connect_timeout": self.options.connect_timeout()},
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="simsvc",
        )
        await pool.open(wait=False)
        self._pool = pool
        self._problem = None
        log.info("postgres store ready (schema version %d)", version)

    async def _configure(self, conn: Any) -> None:
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)
        ms = str(round(self.options.statement_timeout_s * 1000))
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (ms,))
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} (id text, text text, metadata jsonb, "
            "raw bytea, emb vector, tf jsonb, lex_len integer) ON COMMIT DELETE ROWS"
        )

    async def _probe(self) -> None:
        """Keep `problem` current: the readiness probe and the switch back after an outage."""
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            try:
                if self._pool is None:
                    await self._prepare()
                    continue
                async with self._pool.connection(timeout=self.options.connect_timeout_s) as c:
                    await c.execute("SELECT 1")
                if self._problem is not None:
                    log.info("database reachable again")
                self._problem = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "not available"
                self._down(exc)

    def _down(self, exc: BaseException) -> None:
        message = f"database unavailable: {type(exc).__name__}: {exc}".strip()
        if self._problem != message:
            log.error("%s", message)
        self._problem = message

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Database failures as service errors: unreachable or timed out -> 503."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            yield
        except PoolTimeout as exc:
            self._down(exc)
            raise StoreUnavailableError(
                "no database connection became free in time: the database is down or "
                "overloaded; retry later"
            ) from exc
        except psycopg.errors.QueryCanceled as exc:
            raise StoreUnavailableError(
                f"the database did not answer within the statement timeout "
                f"({self.options.statement_timeout_s:g} s); retry later"
            ) from exc
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            # A deadlock between writers of overlapping ids: the database is fine.
            raise ConflictError(
                f"a concurrent write to the same documents conflicted ({exc}); retry"
            ) from exc
        except psycopg.OperationalError as exc:
            self._down(exc)
            raise StoreUnavailableError(f"database unavailable: {exc}") from exc
        except psycopg.DataError as exc:
            raise ValidationError(f"the database refused the data: {exc}") from exc

    def need_pool(self) -> Any:
        """The open pool, or 503 while the database is not reachable."""
        if self._pool is None:
            raise StoreUnavailableError(f"the store is not ready: {self._problem}")
        return self._pool

    async def release(self, conn: Any, rollback: bool = False) -> None:
        """Return a writer's connection to the pool (rolled back when asked)."""
        try:
            if rollback and not conn.closed:
                await conn.execute("ROLLBACK")
        except Exception:
            log.debug("rollback failed", exc_info=True)
        finally:
            if self._pool is not None:
                await self._pool.putconn(conn)
