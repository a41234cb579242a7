"""`simsvc --help` is written for users: every command listed once, in its group."""

from __future__ import annotations

import argparse

import pytest

from service.cli.main import build_parser, main


def test_help_lists_every_command_in_its_group(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "positional arguments" not in text
    for group in ("serving:", "collections", "bundles and models"):
        assert group in text
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = list(actions[0].choices)
    assert len(commands) >= 10
    for name in commands:
        assert f"\n  {name} " in text, name
    assert text.startswith("usage: simsvc [-h] COMMAND ...")
