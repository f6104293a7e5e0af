"""One corpus shard -> one TFRecord shard: read documents in blocks, tokenise, make instances, write.

A shard is the unit of parallelism and of resume. Its bytes depend only on the input shard, the tokenizer,
the settings, the seed and the shard's index (each block draws from `default_rng([seed, shard, block])`),
never on the number of workers. Output goes to a temporary file renamed at the end; a sidecar
`<shard>.tfrecord.json` with the record count, sha256 and a fingerprint of every input is written last, so a
rerun skips a shard whose sidecar, fingerprint and file checksum agree and redoes any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from albert_exp.config import PretrainingDataConfig, identity_settings
from albert_exp.digest import file_digest
from albert_exp.errors import UserError
from albert_exp.pretraining_data.instances import (
    BlockStats,
    RecordBuffer,
    VocabInfo,
    block_arrays,
    make_instances,
    make_records,
)
from albert_exp.processes import die_with_parent  # noqa: F401  (the pool initializer; run() takes it from here)
from albert_exp.tfrecord import RecordWriter
from albert_exp.vocab import normalize

FORMAT_VERSION = 4  # bump when the bytes for the same inputs change: completed shards are then redone


@dataclass(frozen=True)
class ShardTask:
    index: int
    input_path: str
    input_sha256: str
    output_path: str
    tokenizer_dir: str
    lowercase: bool
    keep_accents: bool
    params: PretrainingDataConfig  # resolved (PretrainingDataConfig.resolved)
    seed: int

    @property
    def mode(self) -> str:  # "dynamic": tokenised documents only (dynamic.py), masked in the loader
        return self.params.mode

    @property
    def block_lines(self) -> int:
        return self.params.block_lines

    @property
    def compress(self) -> bool:  # dynamic shards are Arrow files: never gzipped
        return self.params.compress and self.params.mode == "static"

    def fingerprint(self) -> str:
        spm = Path(self.tokenizer_dir) / "spiece.model"
        d = {k: v for k, v in asdict(self).items() if k not in ("input_path", "output_path", "tokenizer_dir")}
        d.update(params=instance_settings(self.params), format=FORMAT_VERSION, spm_sha256=file_digest(spm))
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def instance_settings(p: PretrainingDataConfig) -> dict[str, Any]:
    """The settings that decide a shard's bytes: the section less where and how fast it runs (the stage key's
    rule, albert_exp/identity.py)."""
    return identity_settings(p)


def normalize_text(text: str, *, lowercase: bool, keep_accents: bool) -> str:
    """The tokenizer's normalisation (albert_exp.vocab.normalize), applied to a whole block at once."""
    return normalize(text, lowercase=lowercase, keep_accents=keep_accents)


class Tokenizer:
    """SentencePiece (spiece.model of the tokenizer dir) with the tokenizer's normalisation: ~10x faster than
    the HF fast tokenizer per line, with the same ids (tests/test_pretraining_data.py checks it)."""

    def __init__(self, tokenizer_dir: str | Path, lowercase: bool, keep_accents: bool):
        import sentencepiece as spm

        model = Path(tokenizer_dir) / "spiece.model"
        if not model.is_file():
            raise UserError(
                "no spiece.model in the tokenizer directory",
                where=str(tokenizer_dir),
                fix="run `albert-exp vocab` first, or set pretraining_data.tokenizer_dir",
            )
        self.sp = spm.SentencePieceProcessor(model_file=str(model))
        self.lowercase, self.keep_accents = lowercase, keep_accents
        pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        control = {i for i in range(len(pieces)) if self.sp.is_control(i) or self.sp.is_unknown(i)}
        specials = {}
        for name in ("[CLS]", "[SEP]", "[MASK]", "<pad>"):
            i = self.sp.piece_to_id(name)
            if pieces[i] != name:
                raise UserError(
                    f"the vocabulary has no {name} piece",
                    where=str(model),
                    fix="train it with `albert-exp vocab` (ALBERT's special tokens)",
                )
            specials[name] = i
        self.vocab = VocabInfo.from_pieces(pieces, specials, control)

    def encode_lines(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(concatenated ids, tokens per line)."""
        text = normalize_text("\n".join(lines), lowercase=self.lowercase, keep_accents=self.keep_accents)
        enc = self.sp.encode(text.split("\n"), num_threads=1)
        lens = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
        ids = np.fromiter(chain.from_iterable(enc), dtype=np.int64, count=int(lens.sum()))
        return ids, lens


def read_blocks(path: Path, block_lines: int) -> Iterator[list[list[str]]]:
    """Documents (lists of non-blank lines), in blocks of at least `block_lines` lines cut between documents."""
    block: list[list[str]] = []
    doc: list[str] = []
    n = 0
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for line in fh:
                line = line.strip()
                if line:
                    doc.append(line)
                    n += 1
                elif doc:
                    block.append(doc)
                    doc = []
                    if n >= block_lines:
                        yield block
                        block, n = [], 0
        except UnicodeDecodeError as exc:
            raise UserError(
                f"not UTF-8 text ({exc.reason})",
                where=str(path),
                fix="run `albert-exp corpus` on it, which cleans or rejects bad lines",
            ) from None
    if doc:
        block.append(doc)
    if block:
        yield block


def block_instances(
    docs: list[list[str]], tok: Tokenizer, params: PretrainingDataConfig, rng: np.random.Generator
) -> Iterator[tuple[dict[str, np.ndarray], BlockStats]]:
    """The instances of a block as feature arrays (what `process_shard` writes, for tests and inspection)."""
    return make_instances(*block_arrays(docs, tok), tok.vocab, params, rng)


def shard_done(task: ShardTask) -> dict[str, Any] | None:
    """The sidecar of a complete, valid shard made from the same inputs, or None."""
    out, side = Path(task.output_path), Path(task.output_path + ".json")
    if not (out.is_file() and side.is_file()):
        return None
    try:
        entry = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if entry.get("fingerprint") != task.fingerprint() or entry.get("bytes") != out.stat().st_size:
        return None
    return entry if file_digest(out) == entry.get("sha256") else None


def process_shard(task: ShardTask, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Make (or skip, when already complete) one TFRecord shard; returns its manifest entry."""
    done = shard_done(task)
    if done is not None:
        return {**done, "skipped": True}
    t0 = time.perf_counter()
    tok = Tokenizer(task.tokenizer_dir, task.lowercase, task.keep_accents)
    # The previous shard and its sidecar stay until the new file is complete (both writers rename it into
    # place): a run that fails here leaves a complete earlier shard as it was. A sidecar that no longer
    # describes the file is harmless: shard_done checks the file's sha256 against it.
    if task.mode == "dynamic":
        from albert_exp.pretraining_data import dynamic

        blocks = read_blocks(Path(task.input_path), task.block_lines)
        info = dynamic.write_shard(task, tok, blocks, progress)
        entry = dynamic.manifest_entry(task, info, task.fingerprint(), time.perf_counter() - t0)
        return _write_sidecar(task, entry)
    total = BlockStats(ngram_hist=[0] * task.params.ngram)
    lines = 0
    out = RecordBuffer(task.params)  # reused by every batch: no fresh memory (page faults) per batch
    try:
        with RecordWriter(task.output_path, compress=task.compress) as writer:
            for b, docs in enumerate(read_blocks(Path(task.input_path), task.block_lines)):
                rng = np.random.default_rng([task.seed, task.index, b])
                for framed, count, stats in make_records(*block_arrays(docs, tok), tok.vocab, task.params, rng, out):
                    writer.write_framed(framed, count)
                    total.add(stats)
                n_lines = sum(len(d) for d in docs)
                lines += n_lines
                if progress:
                    progress(n_lines)
            if lines == 0:  # else a 0-record TFRecord would be reported as a made shard
                raise UserError(
                    "the corpus shard has no text (no non-blank lines)",
                    where=task.input_path,
                    fix="remove it from the corpus manifest, or rerun `albert-exp corpus` on non-empty input",
                )
            info = writer.close()
    except OSError as exc:  # a full disk: name the file (write() errors carry no file name)
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, task.output_path) from None
        raise
    entry = {
        "index": task.index,
        "path": os.path.basename(task.output_path),
        "input": task.input_path,
        "input_sha256": task.input_sha256,
        "lines": lines,
        **info,
        "fingerprint": task.fingerprint(),
        "seconds": round(time.perf_counter() - t0, 3),
        "stats": asdict(total),
    }
    return _write_sidecar(task, entry)


def _write_sidecar(task: ShardTask, entry: dict[str, Any]) -> dict[str, Any]:
    side = Path(task.output_path + ".json")
    side.with_suffix(".tmp").write_text(json.dumps(entry, indent=1))
    os.replace(side.with_suffix(".tmp"), side)
    return {**entry, "skipped": False}
