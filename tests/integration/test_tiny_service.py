"""The service through a real ONNX BERT (the tiny one), end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from service.settings import Settings


def test_routes_through_a_real_onnx_bundle(
    make_client: Callable[..., TestClient], tiny_bundle: Path
) -> None:
    client = make_client(Settings(bundle=tiny_bundle, threads=1))
    res = client.post(
        "/v1/similarity",
        json={
            "pairs": [
                {"a": "the man plays the guitar", "b": "the man plays the guitar"},
                {"a": "the man plays the guitar", "b": "a red car in the street"},
            ]
        },
    ).json()["results"]
    assert res[0]["score"] > 0.999 > res[1]["score"]
    assert all(0.0 <= r["probability"] <= 1.0 for r in res)
    vecs = client.post("/embed", json={"inputs": ["the dog", "a cat"]}).json()
    assert len(vecs[0]) == 24  # the whitening's k cut
    raw = client.post("/embed", json={"inputs": "the dog", "pooling": "cls"}).json()
    assert len(raw[0]) == 32
    info = client.get("/info").json()
    assert info["whitening"]["k"] == 24 and info["head"]["kind"] == "lr"
    assert min(p["min_cosine"] for p in info["bundle"]["parity"].values()) >= 0.99999
    assert "dev.tsv" in info["bundle"]["evaluation"]


def test_runtime_imports_neither_torch_nor_transformers(tiny_bundle: Path) -> None:
    code = textwrap.dedent(f"""
        import sys, time
        from fastapi.testclient import TestClient
        from service.main import create_app
        from service.settings import Settings
        import service.cli.main, models.evaluate
        with TestClient(create_app(Settings(bundle={str(tiny_bundle)!r}, threads=1))) as c:
            for _ in range(500):
                if c.get("/ready").status_code == 200:
                    break
                time.sleep(0.02)
            r = c.post("/v1/similarity", json={{"pairs": [{{"a": "x", "b": "y"}}]}})
            assert r.status_code == 200, r.text
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_tampered_bundle_stops_the_start_with_a_clear_error(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    import shutil

    import pytest

    from service.errors import BundleError
    from service.main import create_app

    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    data = json.loads((bad / "manifest.json").read_text())
    data["files"]["model.onnx"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(data))
    with (
        pytest.raises(BundleError, match=r"model.onnx has sha256"),
        TestClient(create_app(Settings(bundle=bad))),
    ):
        pass
