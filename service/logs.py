"""Logging set-up: plain text or JSON lines, each line with the request id."""

from __future__ import annotations

import json
import logging
import re
import time
from contextvars import ContextVar
from typing import IO

request_id_var: ContextVar[str] = ContextVar("simsvc_request_id", default="-")
"""The current request's id (set by the HTTP middleware; "-" outside a request): here, below
the HTTP layer, so the command line configures logging without importing the server."""


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")


class PlainFormatter(logging.Formatter):
    """One line per message: control characters in it (a `%0A` in a URL, say) are escaped,
    and the lines of a traceback that follows are indented, so nothing a client sends can
    start a line that looks like a record of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _CONTROL.sub(_escape, record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        first, *rest = super().format(record).split("\n")
        return "\n".join([first, *("  " + line for line in rest)])


def make_handler(stream: IO[str] | None = None, json_lines: bool = False) -> logging.Handler:
    """A handler that stamps each record with the request id, as text or JSON lines."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else PlainFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    return handler


QUIET_LOGGERS = ("faiss.loader",)
"""Loggers whose INFO lines alarm more than they tell: faiss's loader logs each CPU-feature
build it probes (AVX512, then AVX2), with a `ModuleNotFoundError` for each one it lacks."""


def configure_logging(level: str = "info", json_lines: bool = False) -> None:
    """Route the service's and uvicorn's logs through one handler; the noisy loggers only
    from WARNING up (a logger's level holds whenever faiss is imported)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    handler = make_handler(json_lines=json_lines)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
