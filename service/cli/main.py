"""The `simsvc` command: its parser, and the serve, build and evaluate commands. The
collection clients register from `service.cli.collections`, the offline training commands
from `service.cli.training`; what they share lives in `service.cli.common`.

Only the CLI and `service.main` construct `Settings`. Offline subcommands import the
build extra lazily, with an actionable message when it is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.cli.common import make_client, settings_from_args, setup_logging
from service.settings import Settings


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

    from service.cli.default_bundle import ensure_default_bundle
    from service.main import create_app

    settings = settings_from_args(
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
    setup_logging(settings.log_level, settings.log_json)
    if settings.bundle is None:
        settings = settings.model_copy(update={"bundle": ensure_default_bundle(settings)})
    app = create_app(settings)
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(
            settings.metrics_port,
            addr=settings.host,
            registry=app.state.simsvc.metrics.scrape_view(),  # type: ignore[arg-type]
        )
    uvicorn.run(app, **server_options(settings))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        from models.build import BuildOptions, build_bundle
        from models.export_onnx import require_build_extra
        from models.prompts import prompt_options

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
            head_pairs=args.head_pairs or None,
            fit_sample=args.fit_sample,
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
            cross_symmetric=args.cross_symmetric,
            cross_max_length=args.cross_max_length,
            reranker=args.reranker,
            reranker_max_length=args.reranker_max_length,
            prompts=prompt_options(args),
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
    from service.cli.client import ClientError, evaluate_similarity

    results: dict[str, Any] = {}
    try:
        with make_client(args) as client:
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


INTRO = """\
simsvc: semantic similarity on BERT. It serves pair scores, embeddings, reranking and
search over document collections over HTTP, from a model bundle (an ONNX encoder with
its whitening, pair head and optional cross-encoder) that it also builds and trains.

Run `simsvc COMMAND --help` for a command's options."""

GROUPS = {
    "serving": ("serve",),
    "collections (a running service, or PostgreSQL with --engine ray)": (
        "index",
        "search",
        "evaluate-retrieval",
        "tune-search",
    ),
    "bundles and models (offline; most need the build extra)": (
        "build",
        "evaluate",
        "pretrain",
        "evaluate-mlm",
        "finetune",
        "split-pairs",
        "label-pairs",
        "evaluate-checkpoint",
    ),
}
"""How `simsvc --help` lists the commands: every command is in exactly one group."""


class _Commands:
    """The subcommand registry the command modules add to: each command's one-line `help`
    becomes its description (`simsvc COMMAND --help`) and its line in the grouped list."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub
        self.summaries: dict[str, str] = {}

    def add_parser(self, name: str, *, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        self.summaries[name] = help
        kwargs.setdefault("description", help[:1].upper() + help[1:] + ".")
        parser: argparse.ArgumentParser = self._sub.add_parser(name, **kwargs)
        return parser

    def listing(self) -> str:
        if sorted(self.summaries) != sorted(n for names in GROUPS.values() for n in names):
            raise AssertionError(f"GROUPS and the commands differ: {sorted(self.summaries)}")
        width = max(map(len, self.summaries)) + 2
        blocks = []
        for group, names in GROUPS.items():
            lines = [f"  {n:<{width}}{self.summaries[n]}" for n in names]
            blocks.append("\n".join([f"{group}:", *lines]))
        return "\n\n".join(blocks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simsvc",
        usage="simsvc [-h] COMMAND ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The commands are listed, grouped, in the description: no bare "positional arguments".
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS
    )
    sub = _Commands(commands)

    p = sub.add_parser(
        "serve",
        help="run the HTTP service (no --bundle: builds, then reuses, the default one)",
    )
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

    p = sub.add_parser(
        "build",
        help="make a model bundle (ONNX, whitening, head, cross) from a checkpoint",
    )
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
    p.add_argument(
        "--head-pairs",
        type=Path,
        action="append",
        default=[],
        help="labelled pairs to train the head on; repeatable (e.g. English and Chinese STS-B "
        "train: each file's scale is mapped onto [0, 1] on its own)",
    )
    p.add_argument(
        "--fit-sample",
        type=int,
        metavar="N",
        help="fit the whitening and the head on a seeded sample of at most N pairs of each "
        "pair file (N lines of a text corpus); default: all",
    )
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
        choices=["int8", "int8-channel"],
        help="dynamic int8 quantization (u8s8, uses VNNI), weight scales per tensor or per "
        "output channel; its accuracy cost on --eval-on sets is recorded in the manifest",
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
    p.add_argument(
        "--reranker",
        help="relevance reranker checkpoint (`finetune --objective rerank`): search rerank and "
        "/rerank use it instead of the cross-encoder",
    )
    p.add_argument("--reranker-max-length", type=int, help="default: the card's, else 512")
    from models.prompts import add_prompt_arguments  # no torch: plain argparse and json

    add_prompt_arguments(p)
    p.add_argument(
        "--cross-symmetric",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="/v1/similarity reads each pair in both orders and averages the logits "
        "(symmetric scores, twice the work); /rerank and /predict keep the given order",
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "evaluate",
        help="Spearman on labelled pairs, of a bundle or of a running service (--url)",
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
    from service.cli import collections, training

    collections.register(sub)
    training.register(sub)
    parser.description = f"{INTRO}\n\n{sub.listing()}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
