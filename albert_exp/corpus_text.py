"""Real corpora for the corpus stage: text files or globs (plain or .gz) -> document-aligned shards.

    albert-exp corpus --inputs 'data/chat-*.txt.gz' --lines-per-shard 1000000 --nfkc true --on-bad-line skip

Input is ALBERT's format: one sentence per line, a blank line between documents (the end of a file ends a
document too). Streams line by line: memory holds one document, whatever the corpus size (a "document" of
more than `max_document_lines` lines, e.g. a file without blank lines, is cut there). Optional normalisation
(Unicode NFKC, whitespace collapsed, lower-case) is recorded in the manifest. A line that is not UTF-8 stops
the run naming file:line, or with `on_bad_line: skip` is dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError
from albert_exp.files import expand_files, open_maybe_gzip


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named or matched by each glob, in a stable order; a pattern matching nothing is an error."""
    return expand_files(
        patterns, what="input file", where="corpus.inputs", fix="check the path or glob (quote globs in the shell)"
    )


class Normalizer:
    def __init__(self, nfkc: bool, collapse_whitespace: bool, lowercase: bool):
        self.nfkc, self.ws, self.lower = nfkc, collapse_whitespace, lowercase

    def __call__(self, line: str) -> str:
        if self.nfkc and not line.isascii():
            line = unicodedata.normalize("NFKC", line)
        line = " ".join(line.split()) if self.ws else line.strip()
        return line.lower() if self.lower else line

    def describe(self) -> dict[str, bool]:
        return {"nfkc": self.nfkc, "collapse_whitespace": self.ws, "lowercase": self.lower}


def iter_documents(
    files: list[Path], norm: Normalizer, on_bad_line: str, max_document_lines: int, stats: dict[str, Any], progress=None
) -> Iterator[list[str]]:
    """Documents of all files in order; fills `stats` (lines read, bad lines, per-input sha256 and bytes)."""
    for path in files:
        h = hashlib.sha256()
        doc: list[str] = []
        nbytes = 0
        with open_maybe_gzip(path) as fh:
            try:
                for lineno, raw in enumerate(fh, 1):
                    h.update(raw)
                    nbytes += len(raw)
                    stats["lines_read"] += 1
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        if on_bad_line == "error":
                            raise UserError(
                                f"line is not UTF-8 ({exc.reason} at byte {exc.start})",
                                where=f"{path}:{lineno}",
                                fix="fix the file, or pass --on-bad-line skip to drop such lines",
                            ) from None
                        stats["bad_lines"] += 1
                        if len(stats["bad_line_examples"]) < 10:
                            stats["bad_line_examples"].append(f"{path}:{lineno}")
                        continue
                    line = norm(text)
                    if line:
                        doc.append(line)
                        if len(doc) >= max_document_lines:
                            stats["documents_cut"] += 1
                            yield doc
                            doc = []
                    elif doc:
                        yield doc
                        doc = []
                    if progress is not None and lineno % 10000 == 0:
                        progress(fh)
            except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
                raise UserError(
                    f"cannot read: {exc}",
                    where=f"{path}:{stats['lines_read']}",
                    fix="check the file (a truncated download?)",
                ) from None
        if doc:
            yield doc
        stats["inputs"].append({"path": str(path), "bytes_uncompressed": nbytes, "sha256": h.hexdigest()})


def make_corpus(cfg, out: Path) -> dict[str, Any]:
    """Shard the configured inputs into out/shards and write out/manifest.json; returns the manifest."""
    from tqdm import tqdm

    from albert_exp.corpus_files import ShardWriter

    c = cfg.corpus
    files = expand_inputs(c.inputs)
    norm = Normalizer(c.nfkc, c.collapse_whitespace, c.lowercase)
    stats: dict[str, Any] = {"lines_read": 0, "bad_lines": 0, "bad_line_examples": [], "documents_cut": 0, "inputs": []}
    total = sum(f.stat().st_size for f in files)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="corpus")
    done_before = [0]

    def progress(fh) -> None:  # position in the (compressed) file, for rate and ETA
        raw = getattr(fh, "fileobj", None) or fh
        try:
            bar.n = done_before[0] + raw.tell()
            bar.refresh()
        except (OSError, ValueError):
            pass

    writer = ShardWriter(out, c.lines_per_shard)
    for old in (out / "shards").glob("shard-*.txt"):
        old.unlink()  # a rerun rewrites every shard: stale ones from a bigger corpus must not linger
    try:
        for f in files:
            for doc in iter_documents([f], norm, c.on_bad_line, c.max_document_lines, stats, progress):
                writer.add(doc)
            done_before[0] += f.stat().st_size
            bar.n = done_before[0]
            bar.refresh()
    finally:
        bar.close()
    if not writer.shards:
        raise UserError(
            "the corpus has no sentences (every line empty or dropped)",
            where=", ".join(map(str, files[:3])) + (" ..." if len(files) > 3 else ""),
            fix="check corpus.inputs: one sentence per line, a blank line between documents",
        )
    return writer.finish({"source": "files", "normalization": norm.describe(), "on_bad_line": c.on_bad_line, **stats})


def read_manifest(path: Path, flag: str = "--input") -> dict[str, Any]:
    """The corpus stage's manifest.json, checked: a JSON object listing shards that exist. Anything else (a text
    file given where the manifest is expected, an empty or cut file, no shards) is a one-line UserError."""
    fix = f"give the manifest.json that `albert-exp corpus` wrote ({flag}), or rerun `albert-exp corpus`"
    if not path.is_file():
        raise UserError("corpus manifest not found" if not path.exists() else "not a file", where=str(path), fix=fix)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError("not a corpus manifest (not UTF-8 JSON)", where=str(path), fix=fix) from None
    except json.JSONDecodeError as exc:
        what = "empty file" if not path.read_bytes().strip() else f"not valid JSON at line {exc.lineno}"
        raise UserError(f"not a corpus manifest ({what})", where=str(path), fix=fix) from None
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list) or not all(isinstance(s, dict) and "path" in s for s in shards):
        raise UserError("not a corpus manifest (no list of shards with paths)", where=str(path), fix=fix)
    if not shards:
        raise UserError("the corpus manifest lists no shards", where=str(path), fix="rerun `albert-exp corpus`")
    for s in shards:
        if not (path.parent / s["path"]).is_file():
            raise UserError(
                "corpus shard listed in the manifest is missing",
                where=str(path.parent / s["path"]),
                fix="rerun `albert-exp corpus`",
            )
    return manifest
