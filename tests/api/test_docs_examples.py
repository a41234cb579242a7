"""The README's and the docs' curl examples, run against a live server on the fake encoder
(with the fake cross-encoder and collections on disk), in the order the page shows them.

Every example must answer 2xx (or what its comment says it needs), and a response shown
under it (`# {...}` or `# [...]`) must have the shape of the real one: the same keys, the
same kinds of values, lists of the same kind of items. Numbers are the real bundle's and are
not compared. So the docs cannot drift from the service again.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from service.main import create_app
from service.settings import Settings
from tests.api.conftest import fake_factory
from tests.fakes import FakeCrossEncoder, FakeEncoder
from tests.serving import live_server

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
HOSTS = re.compile(r"^(?:\$U|https?://(?:localhost|127\.0\.0\.1):8000|localhost:8000)")


@dataclass
class Example:
    page: str
    line: int
    command: str
    note: str
    shown: Any = None
    """The response shown under the command, parsed, with elisions as `...` (`Ellipsis`)."""


def _bash_blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            yield start, body
        i += 1


def _complete(command: str) -> bool:
    """No open quote and no trailing backslash."""
    if command.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def _shown(comment: str) -> Any:
    """A response written in a comment: JSON with `…`/`...` standing for elided values."""
    text = comment.replace('"…"', '"@ANY"').replace('"..."', '"@ANY"').replace("{...}", '"@ANY"')
    text = text.replace("…", '"@ANY"').replace("...", '"@ANY"')
    text = re.sub(r',\s*"@ANY"\s*(?=[\]}])', "", text)
    return orjson.loads(text)


def examples(page: str) -> list[Example]:
    found: list[Example] = []
    for start, body in _bash_blocks((ROOT / page).read_text()):
        i = 0
        while i < len(body):
            line = body[i].strip()
            if not line.startswith("curl "):
                i += 1
                continue
            first = i
            command = line
            while not _complete(command) and i + 1 < len(body):
                i += 1
                command += "\n" + body[i]
            note = command.split("#", 1)[1] if "#" in command.rsplit("'", 1)[-1] else ""
            example = Example(page, start + first + 1, command, note)
            # A response shown under it: comment lines from `# {` or `# [` on, until they parse.
            j = i + 1
            if j < len(body) and re.match(r"\s*# [\[{]", body[j]):
                text = ""
                while j < len(body) and body[j].lstrip().startswith("#"):
                    text += body[j].lstrip()[1:].strip()
                    candidate = re.sub(r"\s*\([^)]*\)\s*$", "", text)
                    try:
                        example.shown = _shown(candidate)
                        break
                    except orjson.JSONDecodeError:
                        j += 1
                assert example.shown is not None, f"{page}:{start + j}: unreadable response"
            found.append(example)
            i += 1
    return found


def _request(example: Example, base: str) -> httpx.Response | None:
    """The curl command as an httpx request; None for one that reads a file or stdin."""
    args = shlex.split(example.command.replace("\\\n", " "), comments=True)
    method, headers, data, url = "GET", {}, None, None
    k = 1
    while k < len(args):
        arg = args[k]
        if arg in ("-s", "-S", "-sS"):
            pass
        elif arg == "-X":
            k += 1
            method = args[k]
        elif arg == "-H":
            k += 1
            name, value = args[k].split(":", 1)
            headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data", "--data-binary"):
            k += 1
            if args[k].startswith("@"):
                return None
            data = args[k]
            method = "POST" if method == "GET" else method
        elif HOSTS.match(arg):
            url = HOSTS.sub(base, arg)
            url = url if "://" in url else f"http://{url}"
        else:
            raise AssertionError(f"{example.page}:{example.line}: curl option {arg!r}")
        k += 1
    assert url is not None, f"{example.page}:{example.line}: no URL"
    return httpx.request(method, url, headers=headers, content=data, timeout=30)


ANY = "@ANY"


def same_shape(shown: Any, real: Any, where: str = "$") -> list[str]:
    """Where the shown response differs from the real one in keys or kinds of value."""
    if shown == ANY:
        return []
    if isinstance(shown, dict):
        if not isinstance(real, dict):
            return [f"{where}: shown an object, got {type(real).__name__}"]
        if set(shown) != set(real):
            return [f"{where}: shown keys {sorted(shown)}, got {sorted(real)}"]
        return [p for key in shown for p in same_shape(shown[key], real[key], f"{where}.{key}")]
    if isinstance(shown, list):
        if not isinstance(real, list):
            return [f"{where}: shown a list, got {type(real).__name__}"]
        if shown and real:
            return same_shape(shown[0], real[0], f"{where}[0]")
        return []
    number = (int, float)
    if isinstance(shown, number) and not isinstance(shown, bool):
        ok = isinstance(real, number) and not isinstance(real, bool)
    else:
        ok = type(shown) is type(real)
    return [] if ok else [f"{where}: shown {shown!r}, got {real!r}"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(threads=1, data_dir=tmp_path_factory.mktemp("data"))
    factory = fake_factory(FakeEncoder(dims=128), cross=FakeCrossEncoder(num_labels=1))
    with live_server(create_app(settings, engine_factory=factory)) as url:
        yield url


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_examples_run_and_answer_what_they_show(base: str, page: str) -> None:
    ran = 0
    for example in examples(page):
        resp = _request(example, base)
        if resp is None:
            continue
        ran += 1
        where = f"{page}:{example.line}"
        if "needs" in example.note or "503 until" in example.note:
            assert resp.status_code < 500 or resp.status_code == 503, (where, resp.text)
        else:
            assert 200 <= resp.status_code < 300, (where, example.command, resp.text)
        if example.shown is not None:
            problems = same_shape(example.shown, resp.json())
            assert not problems, (where, problems, resp.text[:500])
    if page == "README.md":
        assert ran >= 20


def test_a_drifted_response_is_caught() -> None:
    """The shape check itself: the search response the README used to show."""
    old = _shown('{"results":[{"id":"p1","score":0.5,"text":"t","metadata":{"year":2020}}]}')
    real = {"mode": "dense", "results": [{"id": "p1", "score": 0.5, "text": "t", "metadata": {}}]}
    assert same_shape(old, real)
    assert not same_shape(
        _shown('[{"index":0,"score":…},{"index":1,"score":…}]'), [{"index": 1, "score": 0.2}]
    )
