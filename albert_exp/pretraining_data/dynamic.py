"""Dynamic masking: tokenised documents stored once, SOP pairs and masks drawn in the loader workers.

    albert-exp pretraining-data --mode dynamic     # shard-NNNNN.arrow + vocab.npz + manifest.json
    albert-exp pretrain --config ...               # finds the dynamic manifest and masks on the fly

Storage: one Arrow IPC file per corpus shard, one record batch per block of documents, one column
`documents: list<list<uint16>>` (uint32 for vocabularies over 65,536 pieces): document -> sentences -> token
ids. Its two offset arrays are exactly the (doc_seg, seg_start) that the static planner takes, so a block is
three zero-copy numpy views of a memory-mapped file. Why Arrow IPC: a maintained, documented format (pyarrow
is already a dependency) with offsets built in, random access to any block without parsing the file, memory
mapping shared by every loader process, and readable by pandas/polars/DuckDB for inspection. It costs 2 bytes
per token and 4 per sentence and document, where `dupe_factor` 40 static copies cost ~8 KB per input line.

Sampling uses the planner and the compiled kernel of the static path (instances.py, masking.py) with one
pass per epoch: epoch e visits every block once, in a permutation seeded by (seed, e), and plans block
(shard s, batch b) with `default_rng([seed, s, b, e])`, exactly what the static path does with all of its
`dupe_factor` passes at once. Instances of the plan are shuffled within the block, and instance i's masking
draws from its own stream: the endless sequence of instances (epochs back to back) is a pure function of
(seed, epoch, index), whatever the number of loader workers, processes or machines. Micro-batch t holds
instances [t * micro, (t + 1) * micro); see albert_exp.pretrain.data for how ranks and workers share them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from albert_exp.config import PretrainingDataConfig
from albert_exp.digest import file_digest
from albert_exp.pretraining_data.instances import BlockStats, VocabInfo, _build, _Layout, _plan
from albert_exp.tfrecord import FEATURES

COLUMN = "documents"


def write_shard(task, tok, blocks, progress=None) -> dict:
    """Tokenised documents of one corpus shard into an Arrow IPC file (tmp + rename); returns
    {"blocks", "documents", "sentences", "tokens", "lines", "bytes", "sha256"}."""
    import pyarrow as pa

    from albert_exp.pretraining_data.instances import block_arrays

    out = Path(task.output_path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    dtype = pa.uint16() if len(tok.vocab.is_start) <= 1 << 16 else pa.uint32()
    schema = pa.schema([(COLUMN, pa.list_(pa.list_(dtype)))])
    info = {"blocks": 0, "documents": 0, "sentences": 0, "tokens": 0, "lines": 0}
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for docs in blocks:
            ids, seg_start, doc_seg = block_arrays(docs, tok)
            if doc_seg.size <= 1:  # nothing but empty lines: no record batch
                info["lines"] += sum(len(d) for d in docs)
                continue
            sentences = pa.ListArray.from_arrays(pa.array(seg_start, pa.int32()), pa.array(ids, dtype))
            documents = pa.ListArray.from_arrays(pa.array(doc_seg, pa.int32()), sentences)
            writer.write_batch(pa.record_batch([documents], schema=schema))
            n_lines = sum(len(d) for d in docs)
            info = {
                "blocks": info["blocks"] + 1,
                "documents": info["documents"] + doc_seg.size - 1,
                "sentences": info["sentences"] + seg_start.size - 1,
                "tokens": info["tokens"] + ids.size,
                "lines": info["lines"] + n_lines,
            }
            if progress:
                progress(n_lines)
    os.replace(tmp, out)
    return {**info, "bytes": out.stat().st_size, "sha256": file_digest(out)}


def save_vocab(path: Path, vocab: VocabInfo) -> None:
    """What the loader needs of the vocabulary (so it does not need the tokenizer directory)."""
    specials = np.array([vocab.cls_id, vocab.sep_id, vocab.mask_id, vocab.pad_id], dtype=np.int64)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, is_start=vocab.is_start, random_ids=vocab.random_ids, specials=specials)
    os.replace(tmp, path)


def load_vocab(path: Path) -> VocabInfo:
    v = np.load(path)
    cls_id, sep_id, mask_id, pad_id = (int(x) for x in v["specials"])
    return VocabInfo(v["is_start"], cls_id, sep_id, mask_id, pad_id, v["random_ids"])


class DynamicSource:
    """The instances of a dynamic pretraining-data directory, by global index (module docstring)."""

    def __init__(self, manifest_path: str | Path):
        self.manifest_path = Path(manifest_path)
        m = json.loads(self.manifest_path.read_text())
        root = self.manifest_path.parent
        self.files = [str(root / s["path"]) for s in m["shards"]]
        self.units = [(i, b) for i, s in enumerate(m["shards"]) for b in range(s["blocks"])]
        if not self.units:
            from albert_exp.errors import UserError

            raise UserError("the dynamic pretraining data holds no documents", where=str(self.manifest_path))
        self.params = replace(PretrainingDataConfig(**m["params"]), dupe_factor=1)
        self.vocab = load_vocab(root / m.get("vocab", "vocab.npz"))
        self.seed = int(m["seed"])
        self.layout = _Layout(self.params)
        self._readers: dict[int, object] = {}
        self._plans: dict[tuple[int, int], tuple] = {}
        self._orders: dict[int, np.ndarray] = {}
        # cursor: (epoch, rank of the block in the epoch's order, global index of its first instance)
        self.cursor = (0, 0, 0)

    def __getstate__(self):  # loader processes open their own memory maps
        return {**self.__dict__, "_readers": {}, "_plans": {}}

    def block(self, unit: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, seg_start, doc_seg) of a block, from the memory-mapped file."""
        import pyarrow as pa

        f, b = unit
        if f not in self._readers:
            self._readers[f] = pa.ipc.open_file(pa.memory_map(self.files[f], "r"))
        docs = self._readers[f].get_batch(b).column(0)
        sents = docs.values
        return (
            sents.values.to_numpy().astype(np.int64),
            sents.offsets.to_numpy().astype(np.int64),
            docs.offsets.to_numpy().astype(np.int64),
        )

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.units))}
        return self._orders[epoch]

    def plan(self, epoch: int, rank: int):
        """(block arrays, plan, instances) of the block at `rank` in epoch `epoch` (the last few cached)."""
        key = (epoch, rank)
        if key not in self._plans:
            unit = self.units[self.order(epoch)[rank]]
            arrays = self.block(unit)
            rng = np.random.default_rng([self.seed, unit[0], unit[1], epoch])
            plan = _plan(*arrays, self.vocab, self.params, rng)
            n = 0 if plan is None else plan.a0.size
            if len(self._plans) >= 4:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = (arrays, plan, n)
        return self._plans[key]

    def seek(self, index: int) -> tuple[int, int, int]:
        """The (epoch, rank, first index) of the block holding instance `index`, walking forward from the
        cursor (from the start if the cursor is past it); planning is cheap next to masking."""
        epoch, rank, first = self.cursor if self.cursor[2] <= index else (0, 0, 0)
        empty = 0
        while True:
            n = self.plan(epoch, rank)[2]
            if first + n > index:
                self.cursor = (epoch, rank, first)
                return self.cursor
            first += n
            empty = 0 if n else empty + 1
            if empty > len(self.units):
                from albert_exp.errors import UserError

                raise UserError("the dynamic pretraining data makes no instances", where=str(self.manifest_path))
            rank += 1
            if rank == len(self.units):
                epoch, rank = epoch + 1, 0

    def instances(self, start: int, count: int) -> tuple[dict[str, np.ndarray], BlockStats, int]:
        """Instances start .. start + count - 1 as google's feature arrays, their statistics (instance
        counts and masking; block-level planning statistics when a block's first instance is included),
        and the epoch of the first one."""
        cols = self.layout.columns(count)
        stats = BlockStats(ngram_hist=[0] * self.params.ngram)
        done = 0
        epoch0 = None
        while done < count:
            epoch, rank, first = self.seek(start + done)
            epoch0 = epoch if epoch0 is None else epoch0
            arrays, plan, n = self.plan(epoch, rank)
            lo = start + done - first
            hi = min(n, lo + count - done)
            part = self.layout.columns(hi - lo)
            _, s = _build(arrays[0], plan, lo, hi, self.vocab, self.params, self.layout, part, None)
            for c, pc in zip(cols, part, strict=True):
                c[done : done + hi - lo] = pc
            stats.add(s)
            done += hi - lo
        features = dict(zip(FEATURES, cols, strict=True))
        features["masked_lm_weights"] = features["masked_lm_weights"].astype(np.uint32).view(np.float32)
        return features, stats, epoch0


def manifest_entry(task, info: dict, fingerprint: str, seconds: float) -> dict:
    return {
        "index": task.index,
        "path": os.path.basename(task.output_path),
        "input": task.input_path,
        "input_sha256": task.input_sha256,
        **info,
        "records": 0,
        "fingerprint": fingerprint,
        "seconds": round(seconds, 3),
        "stats": asdict(BlockStats(ngram_hist=[0] * task.params.ngram)),
    }
