"""Bulk indexing on Ray Data: read JSONL or Parquet, encode in a pool of actors, write to
the PostgreSQL store with COPY.

`simsvc index FILE... --engine ray` runs it. Each actor loads the bundle once (its bytes
travel through Ray's object store, so a cluster's workers need no shared disk for it) and
runs ONNX Runtime with a few threads; the driver writes what comes back in transactions of
`commit_every` documents through the store's own writer, so the documents, whitening and
indexes are exactly what the HTTP path would make. Resumable by id: documents whose id the
collection holds already are skipped (use --no-resume to write them again).

On a small machine Ray's default of one CPU per actor leaves nothing for the read tasks and
the pipeline stalls: actors ask for a fraction of a CPU (`actor_cpus`). `ray.shutdown()`
always runs, also after an error.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from models.beir import to_document
from service.runtime.bundle import MODEL_FILE, TOKENIZER_FILE, load_bundle
from service.runtime.collections import CollectionLimits, IndexDefaults, check_documents
from service.runtime.index import IndexSpec
from service.runtime.store.base import CollectionSpec, Document, ModelInfo, check_name
from service.runtime.store.postgres import PostgresOptions, PostgresStore

log = logging.getLogger("simsvc.index")

RAY_HINT = "--engine ray needs Ray Data: pip install 'ray[data]'"
LINE = "__simsvc_line"


@dataclass
class RayIndexOptions:
    """What `simsvc index --engine ray` takes."""

    files: list[Path]
    collection: str
    bundle: Path
    store: PostgresOptions
    address: str | None = None
    actors: int = 2
    actor_cpus: float = 0.5
    threads: int = 1
    batch: int = 128
    commit_every: int = 2048
    resume: bool = True
    limits: CollectionLimits = field(default_factory=CollectionLimits)
    index: IndexDefaults = field(default_factory=IndexDefaults)


@dataclass
class RayIndexReport:
    indexed: int
    skipped: int
    count: int
    seconds: float

    @property
    def docs_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds else 0.0


class _Encode:
    """A Ray actor: the bundle's encoder, loaded once, turning lines into raw vectors."""

    def __init__(
        self,
        files: dict[str, bytes],
        max_length: int,
        pad_id: int,
        pooling: str,
        threads: int,
        done: set[str],
        limits: CollectionLimits,
    ) -> None:
        from service.runtime.encoder import OnnxEncoder

        self._dir = tempfile.TemporaryDirectory(prefix="simsvc-actor-")
        for name, data in files.items():
            (Path(self._dir.name) / name).write_bytes(data)
        self._encoder = OnnxEncoder(
            Path(self._dir.name) / MODEL_FILE,
            Path(self._dir.name) / TOKENIZER_FILE,
            max_length,
            pad_id=pad_id,
            threads=threads,
            spin=False,
        )
        self._pooling = pooling
        self._done = done
        self._limits = limits

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from service.runtime.encoder import encode_texts

        docs: list[Document] = []
        for obj in _rows(batch):
            doc = to_document(obj)
            if str(doc.get("id")) in self._done:
                continue
            docs.append(
                Document(str(doc["id"]), str(doc.get("text", "")), dict(doc.get("metadata") or {}))
            )
        check_documents(docs, self._limits)
        dims = self._encoder.dims
        raw = (
            encode_texts(self._encoder, [d.text for d in docs])[self._pooling]
            if docs
            else np.empty((0, dims), dtype=np.float32)
        )
        return {
            "id": np.array([d.id for d in docs], dtype=object),
            "text": np.array([d.text for d in docs], dtype=object),
            "metadata": np.array([orjson.dumps(d.metadata).decode() for d in docs], dtype=object),
            "raw": raw.astype(np.float32),
        }


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
    bundle = load_bundle(opts.bundle)
    manifest = bundle.manifest
    model = ModelInfo(manifest.source.model, manifest.pooling, manifest.dims.hidden)
    store = PostgresStore(opts.store)
    started = time.perf_counter()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(store.open())
        if store.problem:
            raise ConnectionError(store.problem)
        spec = CollectionSpec(
            model, IndexSpec(opts.index.kind, opts.index.params(opts.index.kind)),
            bundle.whitening.dims_out, bundle.whitening,
        )  # fmt: skip
        if loop.run_until_complete(store.create(opts.collection, spec)):
            say(f"collection {opts.collection} created")
        theirs = loop.run_until_complete(store.model(opts.collection))
        if (theirs.pooling, theirs.raw_dims) != (model.pooling, model.raw_dims):
            raise ValueError(
                f"collection {opts.collection!r} holds {theirs.raw_dims}-dim {theirs.pooling} "
                f"vectors of {theirs.model}; the bundle makes {model.raw_dims}-dim "
                f"{model.pooling} vectors"
            )
        done = loop.run_until_complete(store.ids(opts.collection)) if opts.resume else set()
        if done:
            say(f"resuming: {len(done)} documents of {opts.collection} are there already")
        ray.init(address=opts.address, include_dashboard=False, log_to_driver=False)
        try:
            indexed = _run(ray, opts, bundle, done, store, loop, progress)
        finally:
            ray.shutdown()
        count = int(loop.run_until_complete(store.info(opts.collection))["count"])
    finally:
        loop.run_until_complete(store.close())
        loop.close()
    return RayIndexReport(indexed, len(done), count, time.perf_counter() - started)


def _run(
    ray: Any,
    opts: RayIndexOptions,
    bundle: Any,
    done: set[str],
    store: PostgresStore,
    loop: asyncio.AbstractEventLoop,
    progress: IO[str] | None,
) -> int:
    from tqdm import tqdm

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # a repeated id: the later line wins
    ctx.enable_progress_bars = False
    files = {
        MODEL_FILE: bundle.model_path.read_bytes(),
        TOKENIZER_FILE: bundle.tokenizer_path.read_bytes(),
    }
    m = bundle.manifest
    ds = _read(opts.files).map_batches(
        _Encode,
        fn_constructor_args=(
            files, m.max_length, m.pad_id, m.pooling, opts.threads, done, opts.limits,
        ),
        batch_size=opts.batch,
        batch_format="numpy",
        concurrency=opts.actors,
        num_cpus=opts.actor_cpus,
    )  # fmt: skip
    indexed = 0
    with tqdm(
        unit="doc", desc=f"indexing {opts.collection}", file=progress, disable=progress is None
    ) as bar:
        for batch in ds.iter_batches(batch_size=opts.commit_every, batch_format="numpy"):
            docs, rows = _last_of_each_id(batch)
            if docs:
                loop.run_until_complete(_write(store, opts.collection, docs, batch["raw"][rows]))
            indexed += len(docs)
            bar.update(len(docs))
    return indexed


def _last_of_each_id(batch: dict[str, Any]) -> tuple[list[Document], list[int]]:
    """The batch's documents, an id given twice keeping its later line."""
    last = {str(doc_id): i for i, doc_id in enumerate(batch["id"])}
    rows = sorted(last.values())
    docs = [
        Document(str(batch["id"][i]), str(batch["text"][i]), orjson.loads(batch["metadata"][i]))
        for i in rows
    ]
    return docs, rows


async def _write(store: PostgresStore, name: str, docs: list[Document], raw: Any) -> None:
    writer = await store.begin(name)
    try:
        await writer.upsert(docs, np.ascontiguousarray(raw, dtype=np.float32))
        await writer.commit()
    except BaseException:
        writer.abort()
        raise
