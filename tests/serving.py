"""A real uvicorn server on loopback, in a thread, for tests that need real sockets: client
libraries, keep-alive, disconnects, overload."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI


@contextmanager
def live_server(app: FastAPI, ready_timeout: float = 60.0, **config: object) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 on a free port; yields the base URL once /ready answers 200.

    Uses the same uvicorn options as `simsvc serve` (no access log of uvicorn's own: the
    service writes its own)."""
    options: dict[str, object] = {"log_config": None, "access_log": False, "lifespan": "on"}
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **options))  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve())

    thread = threading.Thread(target=run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    while httpx.get(f"{url}/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready: {httpx.get(f'{url}/ready').text}")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(60)
