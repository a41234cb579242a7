from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from models.datasets import read_pairs, read_texts, sniff_format


def test_reads_the_three_pair_formats(tmp_path: Path) -> None:
    sts = tmp_path / "sts.tsv"
    sts.write_text("score\tsentence1\tsentence2\tgenre\n4.2\tA b.\tA c.\tx\n0.5\tD.\tE.\tx\n")
    zh = tmp_path / "zh.txt"
    zh.write_text("id1||一架飞机||飞机起飞||5\nid2||猫||狗||1\n")
    binary = tmp_path / "pairs.tsv"
    binary.write_text("s1\ts2\t1\nt1\tt2\t0\n")
    assert [sniff_format(p) for p in (sts, zh, binary)] == ["sts-tsv", "sts-zh", "binary"]
    a = read_pairs(sts)
    assert (a.pairs[0].a, a.pairs[0].b, a.pairs[0].score) == ("A b.", "A c.", 4.2)
    assert a.targets().tolist() == pytest.approx([0.84, 0.1])
    z = read_pairs(zh)
    assert z.pairs[0].b == "飞机起飞" and z.targets().tolist() == [1.0, 0.2]
    b = read_pairs(binary)
    assert b.binary and b.targets().tolist() == [1.0, 0.0]


def test_texts_from_lines_xz_and_pair_columns(tmp_path: Path) -> None:
    lines = tmp_path / "c.txt.xz"
    with lzma.open(lines, "wt", encoding="utf-8") as fh:
        fh.write("first paragraph\n\nsecond one\n")
    assert list(read_texts(lines)) == ["first paragraph", "second one"]
    sts = tmp_path / "sts.tsv"
    sts.write_text("score\tsentence1\tsentence2\n1\tx\ty\n2\ty\tz\n")
    assert list(read_texts(sts)) == ["x", "y", "z"]


def test_a_plain_text_file_is_not_a_pair_file(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("just text\n")
    with pytest.raises(ValueError, match="not a pair file"):
        read_pairs(f)
