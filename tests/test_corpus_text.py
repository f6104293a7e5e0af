"""corpus stage on real text files: globs, .gz, document-aligned shards, manifest, normalisation, bad lines."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from albert_exp.config import load_config
from albert_exp.corpus_text import make_corpus
from albert_exp.errors import UserError


def _cfg(tmp: Path, *extra: str):
    return load_config(None, [f"workdir={tmp / 'w'}", *extra])


def _write(tmp: Path) -> tuple[Path, Path]:
    a = tmp / "in" / "a.txt"
    a.parent.mkdir(parents=True, exist_ok=True)
    a.write_text("Hello  world.\nSecond   line.\n\n\nOther doc.\n", encoding="utf-8")
    b = tmp / "in" / "b.txt.gz"
    with gzip.open(b, "wt", encoding="utf-8") as f:
        f.write("".join(f"Line {i} of doc {i // 3}.\n" + ("\n" if i % 3 == 2 else "") for i in range(30)))
        f.write("Ｆｕｌｌ ｗｉｄｔｈ ＡＢＣ ﬁ.\n")  # last document, no trailing blank line
    return a, b


def test_globs_gz_and_document_aligned_shards(tmp_path):
    _write(tmp_path)
    out = tmp_path / "corpus"
    m = make_corpus(_cfg(tmp_path, f"corpus.inputs={tmp_path / 'in' / '*'}", "corpus.lines_per_shard=8"), out)
    assert [Path(i["path"]).name for i in m["inputs"]] == ["a.txt", "b.txt.gz"]
    assert m["lines"] == 3 + 30 + 1 and m["documents"] == 2 + 10 + 1
    assert m["normalization"] == {"nfkc": False, "collapse_whitespace": True, "lowercase": False}
    texts = []
    for shard in m["shards"]:
        data = (out / shard["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        text = data.decode()
        assert text.endswith("\n\n")  # never cut inside a document
        docs = text.strip("\n").split("\n\n")
        assert len(docs) == shard["documents"] and sum(len(d.split("\n")) for d in docs) == shard["lines"]
        texts.append(text)
    assert len(m["shards"]) > 2
    assert texts[0].startswith("Hello world.\nSecond line.\n\nOther doc.\n\n")  # whitespace collapsed
    assert json.loads((out / "manifest.json").read_text())["sha256"] == m["sha256"]


def test_normalisation_is_applied_and_recorded(tmp_path):
    _write(tmp_path)
    out = tmp_path / "corpus"
    m = make_corpus(
        _cfg(tmp_path, f"corpus.inputs={tmp_path / 'in' / 'b.txt.gz'}", "corpus.nfkc=true", "corpus.lowercase=true"),
        out,
    )
    text = (out / m["shards"][0]["path"]).read_text()
    assert text.rstrip("\n").endswith("full width abc fi.") and "line 0 of doc 0." in text
    assert m["normalization"] == {"nfkc": True, "collapse_whitespace": True, "lowercase": True}


def test_bad_lines_name_file_and_line_or_are_skipped(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good one.\nbad \xff\xfe line\ngood two.\n")
    with pytest.raises(UserError, match=r"bad.txt:2: line is not UTF-8"):
        make_corpus(_cfg(tmp_path, f"corpus.inputs={bad}"), tmp_path / "c1")
    m = make_corpus(_cfg(tmp_path, f"corpus.inputs={bad}", "corpus.on_bad_line=skip"), tmp_path / "c2")
    assert m["lines"] == 2 and m["bad_lines"] == 1 and m["bad_line_examples"] == [f"{bad}:2"]


def test_missing_and_empty_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no input file matches"):
        make_corpus(_cfg(tmp_path, f"corpus.inputs={tmp_path / 'nope*.txt'}"), tmp_path / "c")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    with pytest.raises(UserError, match="the corpus has no sentences"):
        make_corpus(_cfg(tmp_path, f"corpus.inputs={empty}"), tmp_path / "c")


def test_a_file_without_blank_lines_is_cut_into_documents(tmp_path):
    f = tmp_path / "flat.txt"
    f.write_text("".join(f"sentence {i}.\n" for i in range(25)))
    m = make_corpus(_cfg(tmp_path, f"corpus.inputs={f}", "corpus.max_document_lines=10"), tmp_path / "c")
    assert m["documents"] == 3 and m["documents_cut"] == 2 and m["lines"] == 25


def test_corpus_stage_runs_from_the_cli_table(tmp_path, mlflow_store):
    from tests.conftest import stage_runner

    run = stage_runner("corpus")

    _write(tmp_path)
    res = run(_cfg(tmp_path, f"corpus.inputs={tmp_path / 'in' / 'a.txt'}"))
    assert res["lines"] == 3 and res["documents"] == 2 and Path(res["manifest"]).is_file()
