"""The `simsvc` command: serve, build, evaluate, and the collection clients index, search and
evaluate-retrieval (more subcommands register themselves here).

Only this module and `service.main` construct `Settings`. Offline subcommands import the
build extra lazily, with an actionable message when it is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.settings import Settings

if TYPE_CHECKING:
    from service.client import ServiceClient

Handler = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace, **fields: Any) -> Settings:
    """Settings from the environment, overridden by the options given on the command line."""
    overrides = {k: v for k, v in fields.items() if v is not None}
    return Settings(**overrides)


def _configure_logging(level: str = "info", json_lines: bool = False) -> None:
    from service.logs import configure_logging

    configure_logging(level, json_lines)


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for `simsvc serve`: the service writes its own access log, and on
    SIGTERM in-flight requests get `shutdown_timeout_s`, then are cancelled (the batcher
    fails what is still queued), so the process exits within about twice the setting."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_timeout_s),
    }


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.defaults import ensure_default_bundle
    from service.main import create_app

    settings = _settings(
        args,
        bundle=args.bundle,
        host=args.host,
        port=args.port,
        model=args.model,
        threads=args.threads,
        encoder_workers=args.workers,
        store=args.store,
        metrics_port=args.metrics_port,
    )
    _configure_logging(settings.log_level, settings.log_json)
    if settings.bundle is None:
        settings = settings.model_copy(update={"bundle": ensure_default_bundle(settings)})
    app = create_app(settings)
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(
            settings.metrics_port, addr=settings.host, registry=app.state.simsvc.metrics.registry
        )
    uvicorn.run(app, **server_options(settings))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    _configure_logging()
    try:
        from models.build import BuildOptions, build_bundle
        from models.export_onnx import require_build_extra

        require_build_extra()
    except ImportError as exc:
        print(f"simsvc build: {exc}", file=sys.stderr)
        return 2
    manifest = build_bundle(
        BuildOptions(
            model=args.model,
            out=args.out,
            pooling=args.pooling,
            whiten_on=args.whiten_on,
            whiten_dim=args.whiten_dim,
            whiten=args.whiten,
            head_pairs=args.head_pairs,
            head=args.head,
            calibration=args.calibration,
            max_length=args.max_length,
            opset=args.opset,
            optimize=not args.no_optimize,
            quantize=args.quantize,
            eval_on=args.eval_on,
            threads=args.threads,
            force=args.force,
            cross_model=args.cross_model,
            cross_calibrate_on=args.cross_calibrate_on,
            cross_calibration=args.cross_calibration,
            cross_max_length=args.cross_max_length,
        ),
        say=lambda m: print(m, file=sys.stderr),
    )
    if manifest.evaluation:
        from models.evaluate import format_table

        print(format_table(manifest.evaluation))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.url is not None:
        return _evaluate_service(args)
    from models.evaluate import evaluate_bundle, format_table

    results = evaluate_bundle(args.bundle, args.sts, threads=args.threads, record=args.record)
    print(json.dumps(results, indent=1) if args.json else format_table(results))
    return 0


def _evaluate_service(args: argparse.Namespace) -> int:
    """Score labelled pairs through a running service's /v1/similarity (mode bi or cross)."""
    from models.datasets import read_pairs
    from service.client import ClientError, evaluate_similarity

    results: dict[str, Any] = {}
    try:
        with _client(args) as client:
            for path in args.sts:
                pairs = read_pairs(path)
                results[path.name] = evaluate_similarity(
                    client,
                    [(p.a, p.b) for p in pairs.pairs],
                    pairs.scores().tolist(),
                    mode=args.mode,
                    batch=args.batch,
                    concurrency=args.concurrency,
                )
    except (ClientError, OSError, ValueError) as exc:
        print(f"simsvc evaluate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(f"{'data':<22}{'mode':>6}{'pairs':>7}{'score':>9}{'probability':>13}{'pairs/s':>9}")
        for name, r in results.items():
            prob = r["spearman"]["probability"]
            print(
                f"{name:<22}{r['mode']:>6}{r['pairs']:>7}{r['spearman']['score']:>9.2f}"
                f"{'-' if prob is None else f'{prob:.2f}':>13}{r['pairs_per_second']:>9.1f}"
            )
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    _configure_logging()
    try:
        from models.export_onnx import require_build_extra

        require_build_extra()
        from models.pretrain import PretrainOptions, pretrain
    except ImportError as exc:
        print(f"simsvc pretrain: {exc}", file=sys.stderr)
        return 2
    opts = PretrainOptions(
        **{k: v for k, v in vars(args).items() if k not in ("command", "func", "no_progress")},
        progress=not args.no_progress,
    )
    try:
        run = pretrain(opts, say=lambda m: print(m, file=sys.stderr))
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"simsvc pretrain: {exc}", file=sys.stderr)
        return 2
    keys = ("out", "step", "horizon", "stopped", "seconds", "heads_initialised")
    print(json.dumps({**{k: run[k] for k in keys}, "heldout": run["heldout"][-1:]}, indent=1))
    return 0


def cmd_evaluate_mlm(args: argparse.Namespace) -> int:
    try:
        from models.export_onnx import require_build_extra

        require_build_extra()
        from models.pretrain import evaluate_mlm, format_mlm
    except ImportError as exc:
        print(f"simsvc evaluate-mlm: {exc}", file=sys.stderr)
        return 2
    try:
        figures = evaluate_mlm(
            args.model,
            args.corpus,
            instances=args.instances,
            max_length=args.max_length,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
        )
    except ValueError as exc:
        print(f"simsvc evaluate-mlm: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=1) if args.json else format_mlm(figures))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    _configure_logging()
    try:
        from models.export_onnx import require_build_extra

        require_build_extra()
        from models.finetune import FinetuneOptions, finetune
    except ImportError as exc:
        print(f"simsvc finetune: {exc}", file=sys.stderr)
        return 2
    skip = ("command", "func", "no_progress")
    opts = FinetuneOptions(
        **{k: v for k, v in vars(args).items() if k not in skip}, progress=not args.no_progress
    )
    try:
        card = finetune(opts, say=lambda m: print(m, file=sys.stderr))
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"simsvc finetune: {exc}", file=sys.stderr)
        return 2
    keys = ("objective", "steps", "epochs", "stopped", "dev_best", "best_step", "seconds_per_epoch")
    print(json.dumps({"out": str(args.out), **{k: card.get(k) for k in keys}}, indent=1))
    return 0


def cmd_split_pairs(args: argparse.Namespace) -> int:
    from models.finetune_data import split_pairs

    try:
        report = {
            str(p): split_pairs(p, args.out / p.name.split(".")[0], args.dev_share, args.seed)
            for p in args.pairs
        }
    except (ValueError, FileNotFoundError) as exc:
        print(f"simsvc split-pairs: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


def cmd_label_pairs(args: argparse.Namespace) -> int:
    try:
        from models.export_onnx import require_build_extra

        require_build_extra()
        from models.finetune_augment import label_pairs
    except ImportError as exc:
        print(f"simsvc label-pairs: {exc}", file=sys.stderr)
        return 2
    try:
        report = label_pairs(
            args.cross_model,
            args.bi_model,
            args.pairs,
            args.out,
            top_k=args.top_k,
            max_length=args.max_length,
            device=args.device,
            threads=args.threads,
            say=lambda m: print(m, file=sys.stderr),
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"simsvc label-pairs: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


def cmd_evaluate_checkpoint(args: argparse.Namespace) -> int:
    try:
        from models.export_onnx import require_build_extra

        require_build_extra()
        from models.finetune_eval import evaluate_checkpoint
    except ImportError as exc:
        print(f"simsvc evaluate-checkpoint: {exc}", file=sys.stderr)
        return 2
    try:
        report = evaluate_checkpoint(
            args.model,
            args.dev,
            max_length=args.max_length,
            pooling=args.pooling,
            device=args.device,
            precision=args.precision,
            threads=args.threads,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"simsvc evaluate-checkpoint: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


def _client(args: argparse.Namespace) -> ServiceClient:
    from service.client import ServiceClient

    return ServiceClient(
        args.url, api_key=os.environ.get("SIMSVC_API_KEY") or None, timeout=args.timeout
    )


def cmd_index(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return _index_with_ray(args)
    if len(args.file) != 1:
        print("simsvc index: the http engine takes one file at a time", file=sys.stderr)
        return 2
    args.file = args.file[0]
    from service.client import ClientError, index_file

    try:
        with _client(args) as client:
            report = index_file(
                client,
                args.file,
                args.collection,
                batch=args.batch,
                state_path=args.state,
                progress=None if args.quiet else sys.stderr,
                say=lambda m: print(m, file=sys.stderr),
            )
    except (ClientError, OSError) as exc:
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
    from service.defaults import ensure_default_bundle
    from service.main import collection_limits, index_defaults, postgres_options

    settings = _settings(args, bundle=args.bundle, store=args.store)
    url = settings.store.get_secret_value() if settings.store else ""
    if not url.startswith(("postgresql://", "postgres://")):
        print(
            "simsvc index --engine ray writes to the PostgreSQL store: pass --store "
            "postgresql://... or set SIMSVC_STORE",
            file=sys.stderr,
        )
        return 2
    _configure_logging(settings.log_level, settings.log_json)
    try:
        from service.ray_index import RayIndexOptions, index_with_ray

        bundle = settings.bundle or ensure_default_bundle(settings)
        report = index_with_ray(
            RayIndexOptions(
                files=args.file,
                collection=args.collection,
                bundle=bundle,
                store=postgres_options(settings),
                address=args.address,
                actors=args.actors,
                actor_cpus=args.actor_cpus,
                threads=args.actor_threads,
                batch=args.batch,
                resume=not args.no_resume,
                limits=collection_limits(settings),
                index=index_defaults(settings),
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
    from service.client import ClientError, search

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
        with _client(args) as client:
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
    from service.client import ClientError, evaluate_retrieval, read_beir_qrels, read_beir_queries

    modes = [m for part in args.mode for m in part.split(",") if m] or [None]
    runs: list[dict[str, Any]] = []
    try:
        queries, qrels = read_beir_queries(args.queries), read_beir_qrels(args.qrels)
        with _client(args) as client:
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


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("SIMSVC_URL", "http://127.0.0.1:8000"),
        help="the service (SIMSVC_URL); sends SIMSVC_API_KEY as a bearer key when set",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simsvc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--bundle", type=Path, help="model bundle dir (default: build/cache one)")
    p.add_argument("--model", help="checkpoint for the default bundle (SIMSVC_MODEL)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--workers", type=int, help="encoder batcher threads (SIMSVC_ENCODER_WORKERS)")
    p.add_argument("--metrics-port", type=int, help="serve /metrics on its own port")
    p.add_argument(
        "--store",
        help="collection store (SIMSVC_STORE): postgresql://user:pass@host/db for PostgreSQL "
        "+ pgvector shared by replicas; unset: local files under the data dir",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("build", help="build a model bundle from a checkpoint")
    p.add_argument("--model", required=True, help="hub id or local checkpoint directory")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--pooling",
        default="auto",
        choices=["auto", "first_last_avg", "mean", "cls", "pooler"],
        help="auto: a sentence-transformers checkpoint's own, else first_last_avg",
    )
    p.add_argument(
        "--whiten-on",
        type=Path,
        action="append",
        default=[],
        help="texts (one per line) or a pair file; repeatable",
    )
    p.add_argument("--whiten-dim", type=int, help="keep the first K whitened components")
    p.add_argument(
        "--whiten",
        choices=["fit", "auto"],
        default="fit",
        help="fit: serve the whitening fitted on --whiten-on; auto: keep it only when it "
        "raises the cosine's Spearman on the --eval-on pairs (the manifest says which)",
    )
    p.add_argument("--head-pairs", type=Path, help="labelled pairs to train the head on")
    p.add_argument("--head", choices=["lr", "svm"], default="lr")
    p.add_argument("--calibration", choices=["logistic", "sigmoid", "isotonic"])
    p.add_argument("--max-length", type=int)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--no-optimize",
        action="store_true",
        help="skip the transformer graph fusions (Attention, LayerNorm, GELU)",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="dynamic int8 quantization (u8s8, uses VNNI); its accuracy cost on "
        "--eval-on sets is recorded in the manifest",
    )
    p.add_argument(
        "--eval-on",
        type=Path,
        action="append",
        default=[],
        help="pair file to evaluate on and record in the manifest; repeatable",
    )
    p.add_argument(
        "--cross-model",
        help="cross-encoder checkpoint (hub id or local dir; a sequence classifier with 1 or "
        "2 labels) to add to the bundle",
    )
    p.add_argument(
        "--cross-calibrate-on",
        type=Path,
        help="held-out labelled pairs to calibrate the cross-encoder's probability on",
    )
    p.add_argument("--cross-calibration", choices=["sigmoid", "isotonic"], default="sigmoid")
    p.add_argument("--cross-max-length", type=int, help="default: the card's, else 512")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "evaluate",
        help="Spearman of a bundle (in process) or of a running service (--url) on labelled pairs",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--bundle", type=Path)
    target.add_argument(
        "--url", help="a running service: score the pairs through its /v1/similarity"
    )
    p.add_argument(
        "--sts",
        required=True,
        type=Path,
        action="append",
        help="STS-B TSV, Chinese 'id||s1||s2||score', or 's1<TAB>s2<TAB>label'",
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--record", action="store_true", help="store the figures in the manifest")
    p.add_argument("--json", action="store_true")
    p.add_argument("--mode", choices=["bi", "cross"], default="bi", help="with --url")
    p.add_argument("--batch", type=int, help="pairs per request (default: the service's limit)")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight (with --url)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("pretrain", help="masked LM + next-sentence pretraining (domain adaptation)")
    p.add_argument(
        "--corpus",
        required=True,
        type=Path,
        nargs="+",
        action="extend",
        help="paragraph per line, blank line between documents (.gz/.xz too), or pair files",
    )
    p.add_argument("--out", required=True, type=Path, help="output checkpoint directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--init", help="checkpoint to continue from (keeps its MLM/NSP heads)")
    src.add_argument("--config", type=Path, help="BERT config.json: start from random weights")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the --init checkpoint's)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (the schedule's horizon)")
    length.add_argument("--time-budget", type=float, help="seconds for this run")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--warmup", type=float, default=0.06, help="warm-up share of the steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", type=float, default=0.02, help="share of documents held out")
    p.add_argument("--eval-instances", type=int, default=1000, help="held-out pairs to score")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--stop-after", type=int, help="stop (saved, resumable) after this step")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--force", action="store_true", help="start over in a non-empty --out")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("evaluate-mlm", help="MLM and NSP accuracy of a checkpoint on a corpus")
    p.add_argument("--model", required=True, help="checkpoint with MLM and NSP heads")
    p.add_argument("--corpus", required=True, type=Path, nargs="+", action="extend")
    p.add_argument("--instances", type=int, default=4000, help="pairs from the corpus start")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_mlm)

    p = sub.add_parser("finetune", help="fine-tune on labelled pairs: cosent, mnrl or cross")
    p.add_argument("--model", required=True, help="checkpoint to start from (hub id or folder)")
    p.add_argument(
        "--pairs",
        required=True,
        type=Path,
        nargs="+",
        action="extend",
        help="STS TSV, 'id||s1||s2||score', 's1<TAB>s2<TAB>0/1', 'query<TAB>positive', "
        "or a BEIR folder (qrels/train.tsv)",
    )
    p.add_argument("--out", required=True, type=Path, help="output checkpoint directory")
    p.add_argument("--objective", required=True, choices=["cosent", "mnrl", "cross"])
    p.add_argument(
        "--dev",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        help="labelled pairs (Spearman) or a BEIR folder (qrels/dev.tsv, nDCG@10); the "
        "first one picks the best checkpoint",
    )
    p.add_argument("--epochs", type=float, help="passes over the pairs (the schedule's horizon)")
    p.add_argument(
        "--time-budget",
        type=float,
        help="seconds; alone it sets the horizon, with --epochs it stops the run (resumable)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (cross: per pair)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up share of the steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--scale", type=float, default=20.0, help="cosine scale of cosent and mnrl")
    p.add_argument(
        "--pooling",
        choices=["auto", "mean", "cls"],
        default="auto",
        help="bi-encoders: auto = the checkpoint's sentence-transformers pooling, else mean",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0, help="steps between dev scores (0: epoch)")
    p.add_argument("--patience", type=int, default=3, help="dev scores without gain (0: off)")
    p.add_argument(
        "--length-window",
        type=int,
        default=16,
        help="cosent/cross: batches of similar length within runs of this many batches, "
        "shuffled (pads less; 0: plain shuffled batches)",
    )
    p.add_argument(
        "--freeze",
        action="store_true",
        help="cross only: fit LR/SVM on the frozen pooled [CLS] vector, no fine-tuning",
    )
    p.add_argument("--head", choices=["lr", "svm"], default="lr", help="the --freeze classifier")
    p.add_argument("--stop-after", type=int, help="stop (saved, resumable) after this step")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument(
        "--save-every",
        type=int,
        default=200,
        help="steps between resume states (besides each dev score)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--force", action="store_true", help="start over in a non-empty --out")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("split-pairs", help="cut pair files or a BEIR folder into train and dev")
    p.add_argument("pairs", type=Path, nargs="+", help="pair files or BEIR folders")
    p.add_argument("--out", required=True, type=Path, help="one sub-folder per input")
    p.add_argument("--dev-share", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_split_pairs)

    p = sub.add_parser(
        "label-pairs", help="silver pairs for a bi-encoder, scored by a cross-encoder"
    )
    p.add_argument("--cross-model", required=True, help="a `finetune --objective cross` output")
    p.add_argument("--bi-model", required=True, help="bi-encoder that picks each sentence's pairs")
    p.add_argument(
        "--pairs", required=True, type=Path, nargs="+", action="extend", help="gold train pairs"
    )
    p.add_argument("--out", required=True, type=Path, help="STS TSV to write")
    p.add_argument("--top-k", type=int, default=3, help="nearest sentences paired with each")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_label_pairs)

    p = sub.add_parser(
        "evaluate-checkpoint", help="dev figures of a fine-tuned bi- or cross-encoder checkpoint"
    )
    p.add_argument("--model", required=True, help="a `simsvc finetune` output (or any checkpoint)")
    p.add_argument(
        "--dev", required=True, type=Path, nargs="+", action="extend", help="as finetune --dev"
    )
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--pooling", choices=["auto", "mean", "cls"], default="auto")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_evaluate_checkpoint)

    p = sub.add_parser("index", help="bulk-index documents into a collection (resumable)")
    p.add_argument(
        "file",
        type=Path,
        nargs="+",
        help='JSONL: {"id", "text", "metadata"} or a BEIR corpus; Parquet too with --engine ray',
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
    _add_client_options(p)
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
    _add_client_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "evaluate-retrieval",
        help="nDCG@10, recall@100 and MRR@10 of a collection on BEIR queries, per search mode",
    )
    p.add_argument("--collection", required=True)
    p.add_argument("--queries", required=True, type=Path, help="BEIR queries.jsonl")
    p.add_argument("--qrels", required=True, type=Path, help="BEIR qrels TSV")
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
    _add_client_options(p)
    p.set_defaults(func=cmd_evaluate_retrieval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
