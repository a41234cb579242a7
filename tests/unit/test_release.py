"""The release recipe's commands and the finder of published recipe checkpoints."""

from __future__ import annotations

from pathlib import Path

from models.release import BI, CROSS, RERANKER, published_models, recipe


def test_published_models_are_the_recipe_folders_with_a_config(tmp_path: Path) -> None:
    assert published_models(tmp_path) == published_models(tmp_path / "none")
    assert published_models(tmp_path).cross is None
    for name in (CROSS, RERANKER):
        (tmp_path / "models" / name).mkdir(parents=True)
    (tmp_path / "models" / RERANKER / "config.json").write_text("{}")
    found = published_models(tmp_path)
    assert found.reranker == tmp_path / "models" / RERANKER
    assert found.cross is None  # a folder without config.json is not a checkpoint
    assert found.bi is None


def test_the_recipe_trains_three_checkpoints_for_two_epochs_on_the_shared_data() -> None:
    commands = recipe(Path("shared"), Path("out"), 2, "auto")
    assert commands[0][:2] == ["split-pairs", "shared/data/scifact"]
    outs = [c[c.index("--out") + 1] for c in commands[1:]]
    assert outs == [f"out/{BI}", f"out/{CROSS}", f"out/{RERANKER}"]
    objectives = [c[c.index("--objective") + 1] for c in commands[1:]]
    assert objectives == ["cosent", "cross", "rerank"]
    for command in commands[1:]:
        assert command[command.index("--epochs") + 1] == "2"
        assert command[command.index("--device") + 1] == "auto"
    rerank = commands[3]
    assert rerank[rerank.index("--pairs") + 1] == "out/data/scifact"  # split-pairs' output
