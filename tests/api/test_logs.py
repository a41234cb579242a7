from __future__ import annotations

import io
import json
import logging

from fastapi.testclient import TestClient

from service.logs import make_handler


def test_json_log_lines_carry_the_request_id(client: TestClient) -> None:
    stream = io.StringIO()
    handler = make_handler(stream, json_lines=True)
    logger = logging.getLogger("simsvc")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        resp = client.post("/embed", json={"inputs": "x"}, headers={"x-request-id": "req-42"})
        client.post("/embed", json={"inputs": ["t"] * 99})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [e for e in lines if e["logger"] == "simsvc.access"]
    assert resp.headers["x-request-id"] == "req-42"
    assert access[0]["request_id"] == "req-42"
    assert access[0]["message"].startswith("POST /embed 200")
    assert access[1]["request_id"] not in ("req-42", "-")
    assert access[1]["message"].startswith("POST /embed 413")
    assert {"time", "level", "logger", "message", "request_id"} <= set(access[0])
