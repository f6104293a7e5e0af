"""Input files as every stage takes them: paths or globs expanded one way, plain or gzip detected one way.

    expand_files(["corpus/*.txt.gz", "~/extra.txt"], what="input file", where="corpus.inputs", fix="...")

A pattern is a path, a glob (`**` recurses; `~` is expanded), or several paths in one string separated by
spaces (MLflow passes a list parameter as one string); each must name at least one file, and a file named twice
is read once. Nothing here imports anything heavy.
"""

from __future__ import annotations

import glob
import gzip
import os
from pathlib import Path
from typing import BinaryIO

from albert_exp.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"


def expand_files(
    patterns: list[str], *, what: str, where: str, fix: str, skip_suffixes: tuple[str, ...] = ()
) -> list[Path]:
    """The files each pattern names, in pattern order (sorted within a glob); a pattern that names no file is a
    UserError. Files ending in `skip_suffixes` (a writer's manifest or temporary files) are left out."""
    files: list[Path] = []
    for pat in patterns:
        matches = _files(pat, skip_suffixes)
        parts = pat.split()
        if not matches and len(parts) > 1:  # several paths in one string: each must name a file
            for part in parts:
                found = _files(part, skip_suffixes)
                if not found:
                    raise UserError(f"no {what} matches {part!r}", where=where, fix=fix)
                matches.extend(found)
        if not matches:
            raise UserError(f"no {what} matches {pat!r}", where=where, fix=fix)
        files.extend(matches)
    seen: set[Path] = set()
    return [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]


def _files(pattern: str, skip_suffixes: tuple[str, ...]) -> list[Path]:
    path = os.path.expanduser(pattern)
    if os.path.isfile(path):  # a file whose name holds glob characters is itself
        return [] if path.endswith(skip_suffixes) else [Path(path)]
    hits = sorted(glob.glob(path, recursive=True))
    return [Path(h) for h in hits if Path(h).is_file() and not h.endswith(skip_suffixes)]


def is_gzip(head: bytes) -> bool:
    """Whether data starting with `head` (its first two bytes will do) is gzip."""
    return head[:2] == GZIP_MAGIC


def open_maybe_gzip(path: str | Path) -> BinaryIO:
    """The file's bytes, decompressed when it is gzip (detected by its magic, whatever its name)."""
    with open(path, "rb") as f:
        gz = is_gzip(f.read(2))
    return gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115
