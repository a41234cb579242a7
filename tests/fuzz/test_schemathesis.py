"""Schemathesis against the service's own OpenAPI document, every check on, through a real
(tiny) ONNX BERT and cross-encoder on a loopback server: 0 server errors and 0 conformance
failures.

Bounded in time (`SIMSVC_FUZZ_SECONDS`, default 150). The seed is random unless
`SIMSVC_FUZZ_SEED` is set, and printed: a failure reproduces with
`SIMSVC_FUZZ_SEED=<seed> pytest tests/fuzz -s`.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from service.main import create_app
from service.settings import Settings
from tests.serving import live_server

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_server_error_and_no_conformance_failure(
    tiny_cross_bundle: Path, tmp_path: Path
) -> None:
    seed = int(os.environ.get("SIMSVC_FUZZ_SEED") or random.randrange(2**31))
    budget = int(os.environ.get("SIMSVC_FUZZ_SECONDS", "150"))
    print(f"\nschemathesis seed {seed} (SIMSVC_FUZZ_SEED={seed} reproduces this run)")
    settings = Settings(
        bundle=tiny_cross_bundle,
        data_dir=tmp_path / "data",
        threads=1,
        max_texts_per_request=16,
        max_pairs_per_request=8,
        max_chars_per_text=500,
        max_documents_per_request=16,
        max_search_k=50,
        max_collections=32,
        max_body_bytes=65536,
    )
    with live_server(create_app(settings)) as url:
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(CONFIG),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--seed",
            str(seed),
            "--max-examples",
            "15",
            "--max-time",
            str(budget),
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--no-color",
        ]
        done = subprocess.run(
            command,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=budget + 120,
            check=False,
        )
    report = done.stdout + done.stderr
    summary = report[report.find("SUMMARY") :] if "SUMMARY" in report else report[-3000:]
    print(summary)
    assert done.returncode == 0, f"seed {seed}:\n{report[-20000:]}"
    assert "passed" in summary and "failure" not in summary.lower(), summary
