"""Corpus stage: document-aligned text shards with a manifest, or the synthetic toy corpus.

    albert-exp corpus --config experiments/toy.yaml --toy

Writes into <workdir>/corpus/: `shards/shard-NNNNN.txt` (ALBERT's input format: one sentence per line, a blank
line between documents), `manifest.json` (per shard: path, lines, documents, bytes, sha256), and for the toy
corpus the labelled `train.csv`, `val.csv`, `test.csv` (columns `text,phrase`; phrases separated by `|`,
empty for a negative review).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig
from albert_exp.digest import file_digest
from albert_exp.errors import UserError
from albert_exp.identity import output_of
from albert_exp.tracking import stage_run, write_results


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


def make_toy(cfg: ExperimentConfig, out: Path) -> dict[str, Any]:
    from albert_exp import toy

    return toy.write_corpus(cfg, out)


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    """Writes into a fresh directory renamed into place when complete (albert_exp/identity.py): a rerun that
    fails on a bad input file leaves the previous corpus, and the link <workdir>/corpus to it, untouched."""
    if not cfg.corpus.toy and not cfg.corpus.inputs:
        raise UserError(
            "no corpus given",
            where=cfg.source,
            fix="set corpus.inputs to your text files, or corpus.toy: true for the synthetic corpus",
        )
    output = output_of(cfg, "corpus")
    out = output.start(fresh=True)  # shards are not resumable: a killed run starts over
    with stage_run(cfg, "corpus", "toy" if cfg.corpus.toy else "shards", output=output) as tracker:
        if cfg.corpus.toy:
            manifest = make_toy(cfg, out)
        else:
            from albert_exp.corpus_text import make_corpus

            manifest = make_corpus(cfg, out)
            tracker.log_metrics(
                {"corpus/lines_read": manifest["lines_read"], "corpus/bad_lines": manifest["bad_lines"]}, step=0
            )
        tracker.set_tags({"corpus_sha256": manifest["sha256"], "manifest_sha256": file_digest(out / "manifest.json")})
        tracker.log_metrics(
            {
                "corpus/lines": manifest["lines"],
                "corpus/documents": manifest["documents"],
                "corpus/shards": len(manifest["shards"]),
            },
            step=0,
        )
        tracker.log_artifact(out / "manifest.json")
        for split in ("train", "val", "test"):
            if (out / f"{split}.csv").exists():
                tracker.log_artifact(out / f"{split}.csv", "labelled")
        results = {
            "output_dir": str(output.done),
            "key": output.key,
            "manifest": str(output.done / "manifest.json"),
            "lines": manifest["lines"],
            "documents": manifest["documents"],
            "corpus_sha256": manifest["sha256"],
            "run_id": tracker.run_id,
        }
        write_results(out, results, tracker)
    output.commit()
    return results
