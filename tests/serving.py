"""A real uvicorn server on loopback, in a thread, for tests that need real sockets: client
libraries, keep-alive, disconnects, overload, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI

from service.cli.main import server_options


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def shut_down(self, timeout: float = 60.0) -> float:
        """Ask the server to exit, as SIGTERM does; the seconds until it has."""
        started = time.monotonic()
        self.server.should_exit = True
        self.thread.join(timeout)
        return time.monotonic() - started


@contextmanager
def running_server(app: FastAPI, ready_timeout: float = 60.0) -> Iterator[LiveServer]:
    """Serve `app` on 127.0.0.1 on a free port with `simsvc serve`'s uvicorn options; yields
    once /ready answers 200."""
    options = server_options(app.state.simsvc.settings)
    options.update(host="127.0.0.1", port=0, lifespan="on")
    server = uvicorn.Server(uvicorn.Config(app, **options))
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
    live = LiveServer(url, server, thread)
    try:
        yield live
    finally:
        live.shut_down()


@contextmanager
def live_server(app: FastAPI, ready_timeout: float = 60.0) -> Iterator[str]:
    """`running_server`, yielding its base URL."""
    with running_server(app, ready_timeout) as live:
        yield live.url
