"""Bulk indexing on Ray Data: read JSONL or Parquet, encode and write in a pool of actors,
each writing through the same path as an HTTP upload.

`simsvc index FILE... --engine ray` runs it. Each actor builds the bundle's engine once
(`Engine.from_bundle`; on a cluster the bundle's bytes travel through Ray's object store, so
its workers need no shared disk for it; a local Ray's actors read it in place) with a few
ONNX threads, and hands each batch to `Collections.upsert` on the PostgreSQL store, the call
behind
`POST /v1/collections/{name}/documents`: the same checks, encoding, whitening and
transaction, one per batch, as if replicas of the service were sent the batches. The
store's advisory locks let the actors write side by side. Resumable by id: documents whose
id the collection holds already are skipped (use --no-resume to write them again). An id
repeated within a batch keeps its later line; across batches, the batch written last wins.

On a small machine Ray's default of one CPU per actor leaves nothing for the read tasks and
the pipeline stalls: actors ask for a fraction of a CPU (`actor_cpus`). A JSONL file is read
as one block, and Ray hands a block to one actor: the lines are re-cut into blocks of a batch
(a streaming repartition) so that every actor works. A local Ray starts without its
dashboard, with a small object store (the batches are a few hundred kB) and the machine's
CPUs; ONNX threads x actors should not exceed them. `ray.shutdown()` always runs, also after
an error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from models.beir import to_document
from service.options import engine_options, make_collections, postgres_options, uses_postgres
from service.runtime.bundle import load_bundle
from service.runtime.engine import Engine
from service.runtime.imported import EmbeddingError, decode_embedding
from service.runtime.store.base import Document, ModelInfo, check_name
from service.runtime.store.postgres import PostgresStore
from service.runtime.types import FloatArray
from service.settings import Settings

log = logging.getLogger("simsvc.index")

RAY_HINT = "--engine ray needs Ray Data: pip install 'ray[data]'"
LINE = "__simsvc_line"
OBJECT_STORE_BYTES = 256 << 20
"""A local Ray's object store: batches of text are small; the default (30 % of memory) costs
start-up time and memory for nothing."""


@dataclass
class RayIndexOptions:
    """What `simsvc index --engine ray` takes; the store, limits and index defaults come
    from the settings, as the service's do."""

    files: list[Path]
    collection: str
    bundle: Path
    settings: Settings
    address: str | None = None
    actors: int = 2
    actor_cpus: float = 0.5
    threads: int = 1
    batch: int = 128
    resume: bool = True


@dataclass
class RayIndexReport:
    indexed: int
    skipped: int
    count: int
    seconds: float

    @property
    def docs_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds else 0.0


def _bundle_files(directory: Path) -> dict[str, bytes]:
    """Every file of the bundle by its path inside it (the manifest lists their hashes)."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


class _Upsert:
    """A Ray actor: the bundle's engine and the store's collections, opened once; each batch
    of lines goes through `Collections.upsert`, as an HTTP upload does."""

    def __init__(self, files: dict[str, bytes], opts: RayIndexOptions, done: set[str]) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="simsvc-actor-")
        root = Path(self._dir.name) if files else opts.bundle  # a local Ray reads it in place
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        settings = opts.settings
        options = replace(
            engine_options(settings), threads=opts.threads, workers=1, onnx_spin=False, cross=False
        )
        self._engine = Engine.from_bundle(root, options)
        self._engine.start()
        self._collections = make_collections(settings)
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._collections.open())
        self._name = opts.collection
        self._done = done

    def _embedding(self, doc_id: str, value: Any) -> FloatArray | None:
        """An imported raw vector (the text is then not encoded), checked as the server does."""
        if value is None:
            return None
        try:
            return decode_embedding(value, self._engine.core.dims)
        except EmbeddingError as exc:
            raise ValueError(f"document {doc_id!r}: {exc}") from exc

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        docs: dict[str, Document] = {}
        for obj in _rows(batch):
            doc = to_document(obj)
            doc_id = str(doc.get("id"))
            if doc_id in self._done:
                continue
            docs.pop(doc_id, None)  # a repeated id: the later line wins, in its place
            docs[doc_id] = Document(
                doc_id,
                str(doc.get("text", "")),
                dict(doc.get("metadata") or {}),
                self._embedding(doc_id, doc.get("embedding")),
            )
        if docs:
            size = self._collections.limits.batch_documents
            self._loop.run_until_complete(
                self._collections.upsert(
                    self._name, self._engine, _chunks(list(docs.values()), size)
                )
            )
        return {"indexed": np.array([len(docs)], dtype=np.int64)}


async def _chunks(docs: Sequence[Document], size: int) -> AsyncIterator[Sequence[Document]]:
    for start in range(0, len(docs), size):
        yield docs[start : start + size]


def _rows(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A batch's rows as JSON objects: JSONL lines (read as text) or Parquet columns."""
    if LINE in batch:
        for line in batch[LINE]:
            if line.strip():
                yield orjson.loads(line)
        return
    columns = list(batch)
    for i in range(len(batch[columns[0]]) if columns else 0):
        yield {c: _plain(batch[c][i]) for c in columns}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _read(files: list[Path]) -> Any:
    import ray.data

    jsonl = [str(f) for f in files if f.suffix != ".parquet"]
    parquet = [str(f) for f in files if f.suffix == ".parquet"]
    parts = []
    if jsonl:
        parts.append(
            ray.data.read_text(jsonl, drop_empty_lines=True).rename_columns({"text": LINE})
        )
    if parquet:
        parts.append(ray.data.read_parquet(parquet))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def index_with_ray(
    opts: RayIndexOptions, progress: IO[str] | None = None, say: Callable[[str], None] = log.info
) -> RayIndexReport:
    """Index files into a collection of the PostgreSQL store through Ray Data."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError(RAY_HINT) from exc
    check_name(opts.collection)
    if not uses_postgres(opts.settings):
        raise ValueError("the Ray indexer writes to the PostgreSQL store: set its URL")
    bundle = load_bundle(opts.bundle)
    manifest = bundle.manifest
    model = ModelInfo(manifest.source.model, manifest.pooling, manifest.dims.hidden)
    store = PostgresStore(postgres_options(opts.settings))
    collections = make_collections(opts.settings, store=store)
    started = time.perf_counter()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(collections.open())
        if store.problem:
            raise ConnectionError(store.problem)
        done: set[str] = set()
        if opts.collection in loop.run_until_complete(collections.names()):
            theirs = loop.run_until_complete(store.model(opts.collection))
            if (theirs.pooling, theirs.raw_dims) != (model.pooling, model.raw_dims):
                raise ValueError(
                    f"collection {opts.collection!r} holds {theirs.raw_dims}-dim "
                    f"{theirs.pooling} vectors of {theirs.model}; the bundle makes "
                    f"{model.raw_dims}-dim {model.pooling} vectors"
                )
            if opts.resume:
                done = loop.run_until_complete(store.ids(opts.collection))
        if done:
            say(f"resuming: {len(done)} documents of {opts.collection} are there already")
        local: dict[str, Any] = {}
        if opts.address is None:
            local = {"num_cpus": os.cpu_count() or 1, "object_store_memory": OBJECT_STORE_BYTES}
        ray.init(address=opts.address, include_dashboard=False, log_to_driver=False, **local)
        try:
            files = _bundle_files(opts.bundle) if opts.address else {}
            indexed = _run(ray, opts, files, done, progress)
        finally:
            ray.shutdown()
        count = int(loop.run_until_complete(collections.info(opts.collection))["count"])
    finally:
        _close(loop, collections)
    return RayIndexReport(indexed, len(done), count, time.perf_counter() - started)


def _close(loop: asyncio.AbstractEventLoop, collections: Any, timeout_s: float = 30.0) -> None:
    """Close the store, within a bound, and end what is left on the loop. The loop stood
    still while Ray ran (its pool's background tasks with it); a close that never returns
    was seen once in a loaded test run, and must not hang the command after its work is
    committed."""
    try:
        loop.run_until_complete(asyncio.wait_for(collections.close(), timeout_s))
    except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
        log.warning("the store did not close within %.0f s; leaving its connections", timeout_s)
    finally:
        left = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left, timeout=timeout_s))
        loop.close()


def _run(
    ray: Any,
    opts: RayIndexOptions,
    files: dict[str, bytes],
    done: set[str],
    progress: IO[str] | None,
) -> int:
    from tqdm import tqdm

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = (
        _read(opts.files)
        .repartition(target_num_rows_per_block=opts.batch)
        .map_batches(
            _Upsert,
            fn_constructor_args=(files, opts, done),
            batch_size=opts.batch,
            batch_format="numpy",
            concurrency=opts.actors,
            num_cpus=opts.actor_cpus,
        )
    )
    indexed = 0
    with tqdm(
        unit="doc", desc=f"indexing {opts.collection}", file=progress, disable=progress is None
    ) as bar:
        for batch in ds.iter_batches(batch_format="numpy"):
            n = int(np.sum(batch["indexed"]))
            indexed += n
            bar.update(n)
    return indexed
