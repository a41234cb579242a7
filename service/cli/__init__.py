"""The `simsvc` command line: serving, collection clients and the offline pipeline.

Only this package imports `models/` (lazily, where a command needs the build extra).
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The console script's entry point (`simsvc`)."""
    from service.cli.main import main as run

    return run(argv)
