"""`simsvc` training commands: pretrain, evaluate-mlm, finetune, split-pairs, label-pairs,
evaluate-checkpoint. Each imports the build extra lazily, with an actionable message when it
is missing, so the runtime install keeps a working `simsvc`."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.cli.common import setup_logging

Handler = Callable[[argparse.Namespace], int]


def offline(command: str, build_extra: bool = True) -> Callable[[Handler], Handler]:
    """One error path for the offline commands: a missing build extra, bad options or
    files print `simsvc COMMAND: why` and exit 2 instead of a traceback."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            try:
                if build_extra:
                    from models.export_onnx import require_build_extra

                    require_build_extra()
                return handler(args)
            except (ImportError, ValueError, FileExistsError, FileNotFoundError) as exc:
                print(f"simsvc {command}: {exc}", file=sys.stderr)
                return 2

        return run

    return wrap


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options as a run's options (argparse's own keys left out)."""
    skip = ("command", "func", "no_progress")
    return {k: v for k, v in vars(args).items() if k not in skip} | {
        "progress": not args.no_progress
    }


@offline("pretrain")
def cmd_pretrain(args: argparse.Namespace) -> int:
    setup_logging()
    from models.pretrain import PretrainOptions, pretrain

    run = pretrain(PretrainOptions(**_options(args)), say=_say)
    keys = ("out", "step", "horizon", "stopped", "seconds", "heads_initialised")
    print(json.dumps({**{k: run[k] for k in keys}, "heldout": run["heldout"][-1:]}, indent=1))
    return 0


@offline("evaluate-mlm")
def cmd_evaluate_mlm(args: argparse.Namespace) -> int:
    from models.pretrain_eval import evaluate_mlm, format_mlm

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
    print(json.dumps(figures, indent=1) if args.json else format_mlm(figures))
    return 0


@offline("finetune")
def cmd_finetune(args: argparse.Namespace) -> int:
    setup_logging()
    from models.finetune import finetune
    from models.finetune_config import FinetuneOptions

    card = finetune(FinetuneOptions(**_options(args)), say=_say)
    keys = ("objective", "steps", "epochs", "stopped", "dev_best", "best_step", "seconds_per_epoch")
    print(json.dumps({"out": str(args.out), **{k: card.get(k) for k in keys}}, indent=1))
    return 0


@offline("split-pairs", build_extra=False)
def cmd_split_pairs(args: argparse.Namespace) -> int:
    from models.finetune_data import split_pairs

    report = {
        str(p): split_pairs(p, args.out / p.name.split(".")[0], args.dev_share, args.seed)
        for p in args.pairs
    }
    print(json.dumps(report, indent=1))
    return 0


@offline("label-pairs")
def cmd_label_pairs(args: argparse.Namespace) -> int:
    from models.finetune_augment import label_pairs

    report = label_pairs(
        args.cross_model,
        args.bi_model,
        args.pairs,
        args.out,
        top_k=args.top_k,
        max_length=args.max_length,
        device=args.device,
        threads=args.threads,
        both_orders=args.both_orders,
        say=_say,
    )
    print(json.dumps(report, indent=1))
    return 0


@offline("evaluate-checkpoint")
def cmd_evaluate_checkpoint(args: argparse.Namespace) -> int:
    from models.finetune_eval import evaluate_checkpoint

    report = evaluate_checkpoint(
        args.model,
        args.dev,
        max_length=args.max_length,
        pooling=args.pooling,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
    )
    print(json.dumps(report, indent=1))
    return 0


def register(sub: Any) -> None:
    """Add these subcommands to `simsvc`'s parser."""
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
    p.add_argument(
        "--objective",
        required=True,
        choices=["cosent", "mnrl", "cross", "rerank"],
        help="rerank: a relevance cross-encoder on a BEIR folder with mined hard negatives",
    )
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
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument(
        "--prompt-name",
        help="bi-encoders: the checkpoint's prompt prepended to each text (default: its query "
        "prompt, as the bundle serves pairs and queries)",
    )
    prompt.add_argument("--no-prompt", action="store_true", help="bi-encoders: raw text")
    p.add_argument(
        "--retriever-model",
        help="rerank: bi-encoder of the hybrid retriever that mines negatives (default: --model)",
    )
    p.add_argument("--negatives", type=int, default=4, help="rerank: hard negatives per query")
    p.add_argument(
        "--negative-depth", type=int, default=30, help="rerank: negatives come from this top"
    )
    p.add_argument(
        "--rerank-candidates", type=int, default=20, help="rerank: dev candidates per query"
    )
    p.add_argument(
        "--rerank-loss",
        choices=["softmax", "bce"],
        default="softmax",
        help="rerank: listwise softmax over positive + negatives, or binary cross-entropy",
    )
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
    p.add_argument(
        "--both-orders",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average the logits of (a, b) and (b, a), as /v1/similarity does",
    )
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
