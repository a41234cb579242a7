from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from service.logs import make_handler


@contextmanager
def service_log(json_lines: bool) -> Iterator[io.StringIO]:
    """What the service logs meanwhile, through the handler `simsvc serve` installs."""
    stream = io.StringIO()
    handler = make_handler(stream, json_lines=json_lines)
    logger = logging.getLogger("simsvc")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_json_log_lines_carry_the_request_id(client: TestClient) -> None:
    with service_log(json_lines=True) as stream:
        resp = client.post("/embed", json={"inputs": "x"}, headers={"x-request-id": "req-42"})
        client.post("/embed", json={"inputs": ["t"] * 99})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [e for e in lines if e["logger"] == "simsvc.access"]
    assert resp.headers["x-request-id"] == "req-42"
    assert access[0]["request_id"] == "req-42"
    assert access[0]["message"].startswith("POST /embed 200")
    assert access[1]["request_id"] not in ("req-42", "-")
    assert access[1]["message"].startswith("POST /embed 413")
    assert {"time", "level", "logger", "message", "request_id"} <= set(access[0])


def test_plain_log_lines_escape_control_characters(client: TestClient) -> None:
    """Finding 7 of issue 13: a `%0A` in a URL wrote a standalone fake ERROR line."""
    with service_log(json_lines=False) as stream:
        forged = "/v1/collections/c/documents/x%0A2026-01-01 00:00:00 ERROR simsvc forged%0D"
        assert client.get(forged).status_code == 404
    lines = stream.getvalue().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines), lines
    access = [line for line in lines if "simsvc.access" in line]
    assert len(access) == 1 and "\\n2026-01-01" in access[0] and "\\r" in access[0], access
