"""The corpus stage's file formats, written one way by every corpus source (text files, the toy generators).

writer = ShardWriter(out, lines_per_shard=100_000)
writer.add(["first sentence.", "second one."])      # one document
manifest = writer.finish({"source": "toy"})           # manifest.json: lines, documents, sha256 per shard
write_labelled_csv(out / "train.csv", [("a review with pho", ["pho"])])
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ShardWriter:
    """Writes documents into shards of about `lines_per_shard` lines, never splitting a document."""

    def __init__(self, out_dir: Path, lines_per_shard: int):
        self.dir = out_dir / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lines_per_shard = lines_per_shard
        self.shards: list[dict[str, Any]] = []
        self._fh = None

    def _open(self) -> None:
        path = self.dir / f"shard-{len(self.shards):05d}.txt"
        self._fh = open(path.with_suffix(".tmp"), "wb")  # renamed when complete: a killed run leaves no half shard
        self._hash = hashlib.sha256()
        self.shards.append({"path": str(path.relative_to(self.dir.parent)), "lines": 0, "documents": 0, "bytes": 0})

    def add(self, sentences: list[str]) -> None:
        if self._fh is None:
            self._open()
        data = ("\n".join(sentences) + "\n\n").encode("utf-8")
        self._fh.write(data)
        self._hash.update(data)
        shard = self.shards[-1]
        shard["lines"] += len(sentences)
        shard["documents"] += 1
        shard["bytes"] += len(data)
        if shard["lines"] >= self.lines_per_shard:
            self._close()

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            final = self.dir.parent / self.shards[-1]["path"]
            os.replace(final.with_suffix(".tmp"), final)
            self.shards[-1]["sha256"] = self._hash.hexdigest()
            self._fh = None

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self._close()
        manifest = {
            "shards": self.shards,
            "lines": sum(s["lines"] for s in self.shards),
            "documents": sum(s["documents"] for s in self.shards),
            "sha256": hashlib.sha256("".join(s["sha256"] for s in self.shards).encode()).hexdigest(),
            **(extra or {}),
        }
        (self.dir.parent / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return manifest


def write_labelled_csv(path: Path, rows: Iterable[tuple[str, list[str]]], separator: str = "|") -> int:
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "phrase"])
        for text, phrases in rows:
            w.writerow([text, separator.join(phrases)])
            n += 1
    return n
