"""The local store's FAISS side: an `IndexView` (the index with the whitening and dims its
vectors were made with, swapped as a whole), built from the stored raw vectors, caught up
from the store's change log, or loaded from a snapshot.

The SQLite store is the truth and a view only a cache of it, so every function here reads
the store and never writes it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.runtime.index import (
    TRAINED_KINDS,
    IndexSpec,
    VectorIndex,
    ivf_min_training,
    training_sample,
)
from service.runtime.store.base import WhiteningState, embed
from service.runtime.store.docstore import DocStore
from service.runtime.types import FloatArray

log = logging.getLogger("simsvc.collections")


@dataclass
class IndexView:
    """An index with the whitening and dims its vectors were made with; swapped as a whole."""

    index: VectorIndex
    whitening: WhiteningState
    dims: int
    seq: int
    """The last store change the index reflects."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def embed(self, raw: FloatArray) -> FloatArray:
        return embed(self.whitening, self.dims, raw)

    def config(self) -> dict[str, Any]:
        return {**self.index.spec.as_dict(), "dims": self.dims}

    def layout(self) -> dict[str, Any]:
        """What a snapshot must match to be loaded for the current config."""
        return {**self.config(), "whitening": self.whitening.version}


def build_view(
    store: DocStore, spec: IndexSpec, dims: int, white: WhiteningState, ivf_min_documents: int
) -> IndexView:
    """A new view built from every stored raw vector (no re-encoding)."""
    with store.read() as r:
        seq = r.seq()
        live = r.count()
        train = None
        if spec.kind in TRAINED_KINDS and live >= ivf_min_training(spec, ivf_min_documents):
            sample = r.sample(training_sample(spec, live))
            if sample is not None:
                train = embed(white, dims, sample)
        view = IndexView(VectorIndex.create(spec, dims, train, live), white, dims, seq)
        for seqs, raw in r.vectors():
            view.index.add(seqs, view.embed(raw))
    return view


def catch_up(store: DocStore, view: IndexView) -> int:
    """Apply store changes newer than the view: add new rows, remove removed ones; how many."""
    with store.read() as r:
        target = r.seq()
        if target <= view.seq:
            return 0
        removed = r.removed_since(view.seq)
        added = 0
        for seqs, raw in r.vectors(after=view.seq):
            vectors = view.embed(raw)
            with view.lock:
                view.index.add(seqs, vectors)
            added += len(seqs)
        with view.lock:
            view.index.remove(removed)
            view.seq = target
    return added + len(removed)


def load_snapshot(
    directory: Path,
    snapshot: dict[str, Any] | None,
    spec: IndexSpec,
    dims: int,
    white: WhiteningState,
) -> IndexView | None:
    """The snapshot the store points to, if it matches the current config and loads."""
    if not snapshot:
        return None
    expected = {**spec.as_dict(), "dims": dims, "whitening": white.version}
    layout = dict(snapshot["layout"])
    trained_on = int(layout.pop("trained_on", 0))
    if layout != expected:
        return None
    try:
        data = (directory / snapshot["file"]).read_bytes()
        index = VectorIndex.from_bytes(spec, dims, data, trained_on)
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("collection %s: snapshot unusable (%s); rebuilding", directory.name, exc)
        return None
    return IndexView(index, white, dims, int(snapshot["seq"]))
