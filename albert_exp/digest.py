"""Content digests and the code version: what a stage's identity is made of. Imports nothing of the package.

file_digest("runs/toy/corpus/manifest.json")   # sha256 of the bytes (cached per path, size and mtime)
tree_digest("runs/toy/vocab/tokenizer")         # over relative names + contents: never the absolute path
code_version()                                  # <commit>, <commit>-dirty+<hash>, or albert-exp <version>
stage_key("vocab", sections, inputs)            # 20 hex digits over the three
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, timeout=10, check=True).stdout


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`<commit>` of the checkout the package runs from, `<commit>-dirty+<hash>` when the package has uncommitted
    changes (the hash of those changes, so two different edits are two versions), or `albert-exp <version>`
    for an installed package outside git."""
    try:
        sha = _git("rev-parse", "HEAD").decode().strip()
        diff = _git("diff", "HEAD", "--binary", "--", str(PACKAGE))
        untracked = _git("ls-files", "--others", "--exclude-standard", "-z", "--", str(PACKAGE)).split(b"\0")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"albert-exp {version('albert-exp')}"
        except PackageNotFoundError:
            return "unknown"
    h = hashlib.sha256(diff)
    for name in sorted(u for u in untracked if u.endswith(b".py")):  # names relative to the package
        h.update(name)
        h.update((PACKAGE / name.decode()).read_bytes())
    dirty = bool(diff) or any(u.endswith(b".py") for u in untracked)
    return sha + (f"-dirty+{h.hexdigest()[:12]}" if dirty else "")


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (once per process for an unchanged file)."""
    st = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digest(path: str | Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 over the relative names and contents of the files under a directory (or of one file)."""
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file() and x.name not in skip):
        h.update(str(f.relative_to(p)).encode())
        h.update(bytes.fromhex(file_digest(f)))
    return h.hexdigest()


def files_digest(paths: list[Path]) -> str:
    """One digest for an ordered list of files (TFRecord shards, held-out records)."""
    return hashlib.sha256("".join(file_digest(f) for f in paths).encode()).hexdigest()


def stage_key(stage: str, sections: dict[str, Any], inputs: dict[str, str], code: str | None = None) -> str:
    """The key of a stage output: its own settings, its inputs' content digests, the code version."""
    payload = json.dumps(
        {"stage": stage, "sections": sections, "inputs": inputs, "code": code or code_version()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]
