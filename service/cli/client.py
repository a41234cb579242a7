"""The client side over HTTP: resumable bulk indexing, search, retrieval evaluation, and pair
scoring evaluation through `/v1/similarity`.

Used by `simsvc index`, `simsvc search`, `simsvc evaluate-retrieval` and `simsvc evaluate
--url`. Bulk indexing sends a JSONL (or Parquet) file as NDJSON requests of a few hundred
lines (Parquet rows become lines; `service.cli.sources`); after each acknowledged request it
records how many lines are done, with a hash of them, in a small state file, so an
interrupted run resumes where it stopped (and starts over if the done lines changed).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from models.beir import to_document
from service.cli.sources import compact_embedding, count_records, records
from service.runtime.stats import mrr_at_k, ndcg_at_k, recall_at_k, spearman

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


class ClientError(Exception):
    """A request the service refused, or a service that could not be reached."""


class ServiceClient:
    """A small HTTP client: bearer key, JSON errors as `ClientError`, retries on overload."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 300.0,
        retries: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self._retries = retries
        self._sleep = sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer; retries 429/503 (honouring Retry-After) and lost connections.

        A retried write is safe: documents are upserted by id.
        """
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise ClientError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                self._sleep(min(2.0**attempt, 30.0))
                continue
            if resp.status_code in RETRY_STATUSES and not last:
                retry_after = resp.headers.get("retry-after", "")
                self._sleep(
                    float(retry_after) if retry_after.isdigit() else min(2.0**attempt, 30.0)
                )
                continue
            if resp.status_code >= 400:
                try:
                    detail = resp.json().get("error", resp.text)
                except ValueError:
                    detail = resp.text
                if isinstance(detail, dict):  # OpenAI's error object (the /v1 routes)
                    detail = detail.get("message", detail)
                raise ClientError(f"{method} {path}: {resp.status_code}: {detail}")
            return resp.json()
        raise AssertionError("unreachable")


@dataclass
class IndexReport:
    lines: int
    skipped: int
    indexed: int
    count: int
    seconds: float


def default_state_path(path: Path, collection: str) -> Path:
    return path.with_name(f"{path.name}.{collection}.simsvc-index")


def _read_state(state_path: Path, collection: str) -> tuple[int, str]:
    try:
        state = orjson.loads(state_path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return 0, ""
    if state.get("collection") != collection:
        return 0, ""
    return int(state.get("lines", 0)), str(state.get("sha256", ""))


def _write_state(state_path: Path, collection: str, lines: int, digest: str) -> None:
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"collection": collection, "lines": lines, "sha256": digest}))
    os.replace(tmp, state_path)


def index_file(
    client: ServiceClient,
    path: Path,
    collection: str,
    *,
    batch: int = 256,
    state_path: Path | None = None,
    progress: IO[str] | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> IndexReport:
    """Send a JSONL or Parquet file to a collection in NDJSON batches, resuming from the
    state file (which counts lines, or Parquet rows)."""
    from tqdm import tqdm

    state_path = state_path or default_state_path(path, collection)
    total = count_records(path)
    done, digest = _read_state(state_path, collection)
    try:  # before anything is sent: a run that cannot record progress could not resume
        _write_state(state_path, collection, done, digest)
    except OSError as exc:
        raise ClientError(
            f"cannot write the progress file {state_path} ({exc}): pass --state"
        ) from exc
    started = time.perf_counter()
    indexed = count = 0
    hasher = hashlib.sha256()
    with tqdm(
        total=total, unit="doc", desc=f"indexing {collection}", file=progress,
        disable=progress is None, dynamic_ncols=True,
    ) as bar:  # fmt: skip
        lines = records(path)
        skipped = 0
        if done:
            for raw in lines:
                hasher.update(raw)
                skipped += 1
                if skipped == done:
                    break
            if skipped != done or hasher.hexdigest() != digest:
                say(f"{path} changed since {state_path} was written: starting over")
                lines, skipped, hasher = records(path), 0, hashlib.sha256()
            else:
                say(f"resuming after {done} lines acknowledged earlier ({state_path})")
        bar.update(skipped)
        line_no = skipped
        for chunk, raw_lines in _batches(lines, batch, line_no):
            body = b"".join(orjson.dumps(doc) + b"\n" for doc in chunk)
            first, line_no = line_no + 1, line_no + len(raw_lines)
            if chunk:
                try:
                    answer = client.request(
                        "POST",
                        f"/v1/collections/{collection}/documents",
                        content=body,
                        headers={"content-type": "application/x-ndjson"},
                    )
                except ClientError as exc:
                    raise ClientError(f"lines {first}-{line_no}: {exc}") from exc
                indexed += int(answer["indexed"])
                count = int(answer["count"])
            for raw in raw_lines:
                hasher.update(raw)
            _write_state(state_path, collection, line_no, hasher.hexdigest())
            bar.update(len(raw_lines))
    state_path.unlink(missing_ok=True)  # finished: a new run starts from the top
    return IndexReport(total, skipped, indexed, count, time.perf_counter() - started)


def _batches(
    lines: Iterator[bytes], size: int, line_no: int
) -> Iterator[tuple[list[dict[str, Any]], list[bytes]]]:
    """Documents and their raw lines, `size` documents at a time; a repeated id starts a new
    batch, so later lines win as they would one by one."""
    docs: list[dict[str, Any]] = []
    raw_lines: list[bytes] = []
    ids: set[str] = set()
    for raw in lines:
        line_no += 1
        if raw.strip():
            try:
                doc = compact_embedding(to_document(orjson.loads(raw)))
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise ClientError(f"line {line_no}: {exc}") from exc
            doc_id = str(doc.get("id"))
            if doc_id in ids:
                yield docs, raw_lines
                docs, raw_lines, ids = [], [], set()
            docs.append(doc)
            ids.add(doc_id)
        raw_lines.append(raw)
        if len(docs) >= size:
            yield docs, raw_lines
            docs, raw_lines, ids = [], [], set()
    if raw_lines:
        yield docs, raw_lines


def search(
    client: ServiceClient,
    collection: str,
    query: str,
    k: int = 10,
    where: Mapping[str, Any] | None = None,
    *,
    mode: str | None = None,
    rerank: int = 0,
    explain: bool = False,
    fusion: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Search a collection (mode None: the collection's default)."""
    body: dict[str, Any] = {"query": query, "k": k, "filter": dict(where or {})}
    if mode:
        body["mode"] = mode
    if fusion:
        body["fusion"] = dict(fusion)
    if rerank:
        body["rerank"] = {"candidates": rerank}
    if explain:
        body["explain"] = True
    answer = client.request("POST", f"/v1/collections/{collection}/search", json=body)
    return list(answer["results"])


def judged_queries(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The ids of the queries with text and at least one relevant document, sorted."""
    judged = [q for q in sorted(qrels) if q in queries and any(g > 0 for g in qrels[q].values())]
    if not judged:
        raise ClientError("no query in the queries file has a relevant document in the qrels")
    return judged


def evaluate_retrieval(
    client: ServiceClient,
    collection: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    ndcg_k: int = 10,
    recall_k: int = 100,
    concurrency: int = 1,
    progress: IO[str] | None = None,
    mode: str | None = None,
    rerank: int = 0,
    fusion: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """nDCG@ndcg_k, recall@recall_k and MRR@ndcg_k over the judged queries, and end-to-end
    queries/s, in one search mode (None: the collection's default)."""
    from tqdm import tqdm

    judged = judged_queries(queries, qrels)
    k = max(ndcg_k, recall_k)

    def run(qid: str) -> list[str]:
        hits = search(client, collection, queries[qid], k, mode=mode, rerank=rerank, fusion=fusion)
        return [hit["id"] for hit in hits]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool, tqdm(
        total=len(judged), unit="query", desc="searching", file=progress,
        disable=progress is None,
    ) as bar:  # fmt: skip
        ranked: list[Sequence[str]] = []
        for result in pool.map(run, judged):
            ranked.append(result)
            bar.update(1)
    seconds = time.perf_counter() - started
    ndcg = [ndcg_at_k(r, qrels[q], ndcg_k) for q, r in zip(judged, ranked, strict=True)]
    recall = [recall_at_k(r, qrels[q], recall_k) for q, r in zip(judged, ranked, strict=True)]
    mrr = [mrr_at_k(r, qrels[q], ndcg_k) for q, r in zip(judged, ranked, strict=True)]
    return {
        "collection": collection,
        "mode": mode or "default",
        "rerank": rerank,
        "queries": len(judged),
        f"ndcg@{ndcg_k}": round(sum(ndcg) / len(ndcg), 4),
        f"recall@{recall_k}": round(sum(recall) / len(recall), 4),
        f"mrr@{ndcg_k}": round(sum(mrr) / len(mrr), 4),
        "queries_per_second": round(len(judged) / seconds, 1),
        "concurrency": concurrency,
    }


def evaluate_similarity(
    client: ServiceClient,
    pairs: Sequence[tuple[str, str]],
    gold: Sequence[float],
    *,
    mode: str = "bi",
    batch: int | None = None,
    concurrency: int = 1,
) -> dict[str, Any]:
    """Spearman x100 of the service's score and probability against gold, over its API.

    The figures a deployment shows: the same requests a client sends, answered by the
    bundle the service loaded. `batch` defaults to the service's pairs-per-request limit.
    """
    if len(pairs) != len(gold) or not pairs:
        raise ValueError(f"{len(pairs)} pairs and {len(gold)} gold scores")
    if batch is None:
        batch = int(client.request("GET", "/info")["limits"]["max_pairs_per_request"])
    chunks = [list(pairs[i : i + batch]) for i in range(0, len(pairs), batch)]

    def run(chunk: list[tuple[str, str]]) -> list[dict[str, Any]]:
        body = {"pairs": [{"a": a, "b": b} for a, b in chunk], "mode": mode}
        return list(client.request("POST", "/v1/similarity", json=body)["results"])

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for answered in pool.map(run, chunks) for r in answered]
    seconds = time.perf_counter() - started
    scores = [float(r["score"]) for r in results]
    probs = [r["probability"] for r in results]
    return {
        "mode": mode,
        "pairs": len(results),
        "spearman": {
            "score": round(100 * spearman(scores, gold), 2),
            "probability": None
            if any(p is None for p in probs)
            else round(100 * spearman([float(p) for p in probs], gold), 2),
        },
        "pairs_per_second": round(len(results) / seconds, 1),
    }
