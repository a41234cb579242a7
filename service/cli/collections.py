"""`simsvc` collection clients: index (over HTTP, or on Ray Data straight into the
PostgreSQL store), search, evaluate-retrieval and tune-search."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.cli.common import add_client_options, make_client, settings_from_args, setup_logging


def cmd_index(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return _index_with_ray(args)
    if len(args.file) != 1:
        print("simsvc index: the http engine takes one file at a time", file=sys.stderr)
        return 2
    args.file = args.file[0]
    from service.cli.client import ClientError, index_file

    try:
        with make_client(args) as client:
            report = index_file(
                client,
                args.file,
                args.collection,
                batch=args.batch,
                state_path=args.state,
                progress=None if args.quiet else sys.stderr,
                say=lambda m: print(m, file=sys.stderr),
            )
    except (ClientError, OSError, ImportError, ValueError) as exc:
        print(f"simsvc index: {exc}", file=sys.stderr)
        print("run the same command again to resume after the acknowledged lines", file=sys.stderr)
        return 1
    print(
        f"{report.indexed} documents indexed into {args.collection} in {report.seconds:.1f}s "
        f"({report.skipped} lines skipped as already done); the collection holds {report.count}"
    )
    return 0


def _index_with_ray(args: argparse.Namespace) -> int:
    """Straight into the PostgreSQL store, encoding in Ray actors (no server involved)."""
    from service.cli.default_bundle import ensure_default_bundle
    from service.options import uses_postgres

    settings = settings_from_args(args, bundle=args.bundle, store=args.store)
    if not uses_postgres(settings):
        print(
            "simsvc index --engine ray writes to the PostgreSQL store: pass --store "
            "postgresql://... or set SIMSVC_STORE",
            file=sys.stderr,
        )
        return 2
    setup_logging(settings.log_level, settings.log_json)
    try:
        from service.cli.ray_index import RayIndexOptions, index_with_ray

        bundle = settings.bundle or ensure_default_bundle(settings)
        report = index_with_ray(
            RayIndexOptions(
                files=args.file,
                collection=args.collection,
                bundle=bundle,
                settings=settings,
                address=args.address,
                actors=args.actors,
                actor_cpus=args.actor_cpus,
                threads=args.actor_threads,
                batch=args.batch,
                resume=not args.no_resume,
            ),
            progress=None if args.quiet else sys.stderr,
            say=lambda m: print(m, file=sys.stderr),
        )
    except (ImportError, OSError, ValueError, ConnectionError) as exc:
        print(f"simsvc index: {exc}", file=sys.stderr)
        print("run the same command again to resume: stored ids are skipped", file=sys.stderr)
        return 1
    print(
        f"{report.indexed} documents indexed into {args.collection} in {report.seconds:.1f}s "
        f"({report.docs_per_second:.1f} docs/s; {report.skipped} already there); the "
        f"collection holds {report.count}"
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from service.cli.client import ClientError, search

    where: dict[str, Any] = {}
    for item in args.filter:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"simsvc search: --filter takes key=value, got {item!r}", file=sys.stderr)
            return 2
        try:
            where[key] = json.loads(value)
        except ValueError:
            where[key] = value
    try:
        with make_client(args) as client:
            hits = search(
                client,
                args.collection,
                args.query,
                args.k,
                where,
                mode=args.mode,
                rerank=args.rerank,
                explain=args.explain,
            )
    except ClientError as exc:
        print(f"simsvc search: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(hits, indent=1, ensure_ascii=False))
    else:
        for rank, hit in enumerate(hits, 1):
            text = " ".join(hit["text"].split())
            where_from = ""
            if hit.get("sources"):
                where_from = (
                    " ["
                    + " ".join(f"{name}#{src['rank']}" for name, src in hit["sources"].items())
                    + "]"
                )
            print(f"{rank:>3}  {hit['score']:.4f}  {hit['id']}{where_from}  {text[:100]}")
    return 0


def cmd_evaluate_retrieval(args: argparse.Namespace) -> int:
    from models.beir import read_beir_qrels, read_beir_queries
    from service.cli.client import ClientError, evaluate_retrieval

    modes = [m for part in args.mode for m in part.split(",") if m] or [None]
    runs: list[dict[str, Any]] = []
    try:
        queries, qrels = read_beir_queries(args.queries), read_beir_qrels(args.qrels)
        with make_client(args) as client:
            for mode in modes:
                runs.append(
                    evaluate_retrieval(
                        client,
                        args.collection,
                        queries,
                        qrels,
                        recall_k=args.recall_k,
                        concurrency=args.concurrency,
                        progress=None if args.quiet else sys.stderr,
                        mode=mode,
                        rerank=args.rerank,
                    )
                )
    except (ClientError, OSError) as exc:
        print(f"simsvc evaluate-retrieval: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(runs[0] if len(runs) == 1 else runs, indent=1))
    else:
        keys = [k for k in runs[0] if k not in ("collection", "concurrency")]
        print("  ".join(f"{k:>18}" for k in keys))
        for figures in runs:
            print("  ".join(f"{figures[k]!s:>18}" for k in keys))
    return 0


def cmd_tune_search(args: argparse.Namespace) -> int:
    from models.beir import read_beir_qrels, read_beir_queries
    from service.cli.client import ClientError, judged_queries
    from service.cli.tuning import default_grid, read_lists, tune

    try:
        queries, qrels = read_beir_queries(args.queries), read_beir_qrels(args.qrels)
        qids = judged_queries(queries, qrels)
        with make_client(args) as client:
            lists = read_lists(client, args.collection, queries, qids, args.depth)
            ranked = tune(lists, qrels, default_grid(args.depth))
            best_score, best = ranked[0]
            if args.apply:
                client.request(
                    "PUT",
                    f"/v1/collections/{args.collection}",
                    json={"search": best.as_defaults()},
                )
    except (ClientError, OSError) as exc:
        print(f"simsvc tune-search: {exc}", file=sys.stderr)
        return 1
    by_mode = {
        mode: next(s for s, setting in ranked if setting.mode == mode)
        for mode in ("dense", "lexical", "hybrid")
    }
    report = {
        "collection": args.collection,
        "queries": len(qids),
        "best": {"ndcg@10": round(best_score, 4), **best.as_defaults()},
        "best_per_mode": {m: round(s, 4) for m, s in by_mode.items()},
        "applied": bool(args.apply),
        "top": [{"ndcg@10": round(s, 4), "setting": st.label()} for s, st in ranked[:10]],
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{len(qids)} queries, {len(ranked)} settings, lists {args.depth} deep")
    for mode, value in report["best_per_mode"].items():
        print(f"  best {mode:<8} nDCG@10 {value:.4f}")
    for row in report["top"]:
        print(f"  {row['ndcg@10']:.4f}  {row['setting']}")
    verb = "stored as the collection's default" if args.apply else "(--apply stores it)"
    print(f"best: {best.label()} {verb}")
    return 0


def _add_judged_queries(p: argparse.ArgumentParser, qrels_help: str) -> None:
    p.add_argument("--collection", required=True)
    p.add_argument("--queries", required=True, type=Path, help="BEIR queries.jsonl")
    p.add_argument("--qrels", required=True, type=Path, help=qrels_help)


def register(sub: Any) -> None:
    """Add these subcommands to `simsvc`'s parser."""
    p = sub.add_parser("index", help="bulk-index documents into a collection (resumable)")
    p.add_argument(
        "file",
        type=Path,
        nargs="+",
        help='JSONL: {"id", "text", "metadata", "embedding"} or a BEIR corpus; Parquet (.parquet: '
        "columns id, text, metadata, embedding; needs pyarrow). embedding: the raw vector of the "
        "collection's model (a list of floats or base64 float32); the text is then not encoded",
    )
    p.add_argument("--collection", required=True)
    p.add_argument(
        "--engine",
        choices=["http", "ray"],
        default="http",
        help="http: NDJSON requests to a running service (--url); ray: Ray Data encodes in "
        "actors and writes straight into the PostgreSQL store (--store, --bundle)",
    )
    p.add_argument("--batch", type=int, default=256, help="documents per request / per actor call")
    p.add_argument("--state", type=Path, help="http: progress file (default: beside FILE)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--store", help="ray: the PostgreSQL store URL (SIMSVC_STORE)")
    p.add_argument("--bundle", type=Path, help="ray: model bundle (SIMSVC_BUNDLE; else default)")
    p.add_argument("--address", help="ray: a Ray cluster to join (auto, or ray://host:port)")
    p.add_argument("--actors", type=int, default=2, help="ray: encoder actors")
    p.add_argument(
        "--actor-cpus",
        type=float,
        default=0.5,
        help="ray: CPUs each actor asks for; fractions leave room for the read tasks",
    )
    p.add_argument("--actor-threads", type=int, default=1, help="ray: ONNX threads per actor")
    p.add_argument(
        "--no-resume", action="store_true", help="ray: write documents whose id is stored too"
    )
    add_client_options(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a collection by meaning")
    p.add_argument("query")
    p.add_argument("--collection", required=True)
    p.add_argument("-k", type=int, default=10)
    p.add_argument(
        "--filter", action="append", default=[], metavar="KEY=VALUE", help="metadata equality"
    )
    p.add_argument(
        "--mode", choices=["dense", "lexical", "hybrid"], help="default: the collection's"
    )
    p.add_argument("--rerank", type=int, default=0, help="rescore the top N (cross-encoder)")
    p.add_argument("--explain", action="store_true", help="show which lists each hit came from")
    p.add_argument("--json", action="store_true")
    add_client_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "evaluate-retrieval",
        help="nDCG@10, recall@100, MRR@10 of a collection on BEIR queries, per mode",
    )
    _add_judged_queries(p, "BEIR qrels TSV")
    p.add_argument("--recall-k", type=int, default=100)
    p.add_argument(
        "--mode",
        action="append",
        default=[],
        help="dense, lexical, hybrid (repeat or comma-separate for one row each); default: "
        "the collection's",
    )
    p.add_argument("--rerank", type=int, default=0, help="rescore the top N (cross-encoder)")
    p.add_argument("--concurrency", type=int, default=1, help="queries in flight")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")
    add_client_options(p)
    p.set_defaults(func=cmd_evaluate_retrieval)

    p = sub.add_parser(
        "tune-search",
        help="pick a collection's default search mode and fusion on judged queries",
    )
    _add_judged_queries(p, "BEIR qrels TSV (train queries: tune on them, report on others)")
    p.add_argument("--depth", type=int, default=100, help="how deep each list is read")
    p.add_argument("--apply", action="store_true", help="store the best as the default")
    p.add_argument("--json", action="store_true")
    add_client_options(p)
    p.set_defaults(func=cmd_tune_search)
