"""What every `simsvc` command shares: settings from the options given, logging, the HTTP
client's options. The command modules import this, never each other."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from service.settings import Settings

if TYPE_CHECKING:
    from service.cli.client import ServiceClient


def settings_from_args(args: argparse.Namespace, **fields: Any) -> Settings:
    """Settings from the environment, overridden by the options given on the command line."""
    overrides = {k: v for k, v in fields.items() if v is not None}
    return Settings(**overrides)


def setup_logging(level: str = "info", json_lines: bool = False) -> None:
    from service.logs import configure_logging

    configure_logging(level, json_lines)


def make_client(args: argparse.Namespace) -> ServiceClient:
    from service.cli.client import ServiceClient

    return ServiceClient(
        args.url, api_key=os.environ.get("SIMSVC_API_KEY") or None, timeout=args.timeout
    )


def add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("SIMSVC_URL", "http://127.0.0.1:8000"),
        help="the service (SIMSVC_URL); sends SIMSVC_API_KEY as a bearer key when set",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
