"""Durable files of the local store: write aside, fsync, rename over, fsync the directory, so
a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
from pathlib import Path

STORE_FILE = "store.sqlite3"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(tmp: Path, final: Path) -> None:
    """fsync a finished temporary file, rename it over `final`, fsync the directory."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_durably(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    durable_replace(tmp, path)


def whitening_file(directory: Path, version: int) -> Path:
    """Where a collection keeps a whitening version."""
    return directory / f"whitening-{version}.npz"
