"""albert_exp.files: the one glob expander and gzip sniffer every stage uses."""

from __future__ import annotations

import gzip

import pytest

from albert_exp.errors import UserError
from albert_exp.files import expand_files, open_maybe_gzip

WHERE = dict(what="input file", where="test.inputs", fix="check it")


def test_globs_paths_and_several_paths_in_one_string(tmp_path):
    for name in ("b.txt", "a.txt", "c.log", "d[1].txt", "sub/e.txt", "m.json", "n.tmp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x\n")
    got = expand_files([str(tmp_path / "*.txt"), str(tmp_path / "a.txt")], **WHERE)
    assert [p.name for p in got] == ["a.txt", "b.txt", "d[1].txt"]  # sorted within a glob, a file named twice read once
    deep = expand_files([str(tmp_path / "**" / "*.txt")], **WHERE)
    assert [p.name for p in deep] == ["a.txt", "b.txt", "d[1].txt", "e.txt"]
    assert expand_files([str(tmp_path / "d[1].txt")], **WHERE)[0].name == "d[1].txt"  # a name with glob chars
    two = f"{tmp_path / 'c.log'} {tmp_path / 'a.txt'}"  # MLflow passes a list parameter as one string
    assert [p.name for p in expand_files([two], **WHERE)] == ["c.log", "a.txt"]
    kept = expand_files([str(tmp_path / "*")], skip_suffixes=(".json", ".tmp"), **WHERE)
    assert [p.name for p in kept] == ["a.txt", "b.txt", "c.log", "d[1].txt"]  # a directory is not a file


@pytest.mark.parametrize("pattern", ["nope*.txt", "nope.txt", "a.txt nope.txt"])
def test_a_pattern_naming_no_file_is_a_user_error(tmp_path, pattern):
    (tmp_path / "a.txt").write_text("x\n")
    parts = " ".join(str(tmp_path / p) for p in pattern.split())
    with pytest.raises(UserError, match="no input file matches .*nope") as e:
        expand_files([parts], **WHERE)
    assert e.value.where == "test.inputs" and e.value.fix == "check it"


def test_gzip_is_detected_by_its_bytes_not_its_name(tmp_path):
    (tmp_path / "plain.gz").write_bytes(b"plain\n")
    (tmp_path / "packed.txt").write_bytes(gzip.compress(b"packed\n"))
    with open_maybe_gzip(tmp_path / "plain.gz") as f, open_maybe_gzip(tmp_path / "packed.txt") as g:
        assert (f.read(), g.read()) == (b"plain\n", b"packed\n")
