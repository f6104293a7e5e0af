"""Streaming, shuffled, resumable batches from TFRecord shards (ours or google's create_pretraining_data.py).

Determinism is what makes exact resume possible, so the order is a pure function of (seed, file list):

* There are S *streams* (one per loader process). In epoch e every stream gets its share of a seeded
  permutation of the files (files perm[s::S]); with fewer files than streams every stream reads every file
  and keeps records i with i % S == s. Each stream loops over epochs forever.
* A stream reads `shuffle_block` records at a time from one file and yields them in a seeded permutation of
  the block (seed from epoch, stream, file and block offset), then collates micro-batches.
* Every batch carries its stream's *position* after it (epoch, file, block offset, records taken from the
  block) and the torch DataLoader serves workers round-robin, so batch k comes from stream k % S. A checkpoint
  stores the positions; a resumed stream re-reads one block, skips what was taken, and goes on.

A micro-batch's records are decoded together in compiled code (`tfrecord.decode_batch`, ~15x the records
per CPU-second of decoding them one by one in Python), byte for byte what `decode_example` gives.
CRC checks happen on every record; a corrupt one stops the run with file and offset (or is skipped and
counted with skip_corrupt). Records whose sequence length differs from the config are a user error too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from albert_exp.errors import UserError
from albert_exp.files import expand_files
from albert_exp.tfrecord import FEATURES, CorruptRecordError, decode_batch, decode_example, iter_records


@dataclass
class Position:
    """Where a stream stands: in epoch `epoch`, file `file` of its list, block starting at byte `offset`
    (record index `record` in that file), `taken` records of the block already used."""

    epoch: int = 0
    file: int = 0
    offset: int = 0
    record: int = 0
    taken: int = 0


def expand_inputs(patterns: list[str], where: str = "pretrain.input") -> list[str]:
    """TFRecord files named or matched by each glob (manifests and unfinished writes left out)."""
    files = expand_files(
        patterns,
        what="TFRecord file",
        where=where,
        fix="run `albert-exp pretraining-data` first, or set pretrain.input to files or globs",
        skip_suffixes=(".json", ".tmp"),
    )
    return [str(f) for f in files]


def resolve_inputs(inputs: list[str], default_dir: Path) -> list[str]:
    """pretrain.input -> [dynamic manifest] or TFRecord files; empty: what pretraining-data wrote."""
    manifest = dynamic_manifest(inputs or [str(default_dir)])
    if manifest:
        return [manifest]
    return expand_inputs(inputs or [str(default_dir / "*.tfrecord*")])


# google's features the model reads (token_boundary is not), and their kinds
KINDS = {
    name: FEATURES[name][0]
    for name in (
        "input_ids",
        "input_mask",
        "segment_ids",
        "masked_lm_positions",
        "masked_lm_ids",
        "masked_lm_weights",
        "next_sentence_labels",
    )
}


def to_batch(examples: list[dict[str, np.ndarray]], max_seq_length: int, source: str) -> dict[str, torch.Tensor]:
    """Decoded examples (`decode_example`'s) -> model inputs: the reference of `payloads_to_batch`."""

    def stack(name: str, dtype) -> np.ndarray:
        try:
            return np.stack([e[name] for e in examples]).astype(dtype, copy=False)
        except KeyError:
            raise UserError(
                f"records have no '{name}' feature",
                where=source,
                fix="give TFRecords written by create_pretraining_data.py or pretraining-data",
            ) from None
        except ValueError:
            raise UserError(f"records of different lengths for '{name}'", where=source) from None

    arrays = {name: stack(name, np.float32 if kind == "float" else np.int64) for name, kind in KINDS.items()}
    return arrays_to_batch(arrays, max_seq_length, source)


def payloads_to_batch(payloads: list[bytes], max_seq_length: int, source: str, at: str = "") -> dict:
    """Serialized examples -> model inputs, decoded in compiled code (`tfrecord.decode_batch`); where that is
    not sure to read them as `decode_example` does (another layout, a malformed record...), one by one with
    it: the same tensors either way, or the error that names what is wrong. `at`: where the last one was read."""
    arrays = decode_batch(payloads, KINDS)
    if arrays is not None:
        return arrays_to_batch(arrays, max_seq_length, source)
    examples = []
    for k, payload in enumerate(payloads):
        try:
            examples.append(decode_example(payload))
        except ValueError as exc:
            where = f"{source} (record {k + 1} of the {len(payloads)} read up to {at})"
            raise UserError(str(exc), where=where) from None
    return to_batch(examples, max_seq_length, source)


def arrays_to_batch(a: dict[str, np.ndarray], max_seq_length: int, source: str) -> dict[str, torch.Tensor]:
    """google's features as [N, L] matrices -> model inputs. Masked LM targets stay as (positions, ids,
    weights) like google's run_pretraining.py, so the loss gathers only the masked positions."""
    ids = a["input_ids"]
    if ids.shape[1] != max_seq_length:
        raise UserError(
            f"records have sequence length {ids.shape[1]}, the config says {max_seq_length}",
            where=source,
            fix=f"set pretrain.max_seq_length={ids.shape[1]}",
        )
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(a["input_mask"]),
        "token_type_ids": torch.from_numpy(a["segment_ids"]),
        "mlm_positions": torch.from_numpy(a["masked_lm_positions"]),
        "mlm_ids": torch.from_numpy(a["masked_lm_ids"]),
        "mlm_weights": torch.from_numpy(a["masked_lm_weights"]),
        "sop_labels": torch.from_numpy(a["next_sentence_labels"].reshape(-1)),
    }


class Stream:
    """One deterministic, resumable stream of micro-batches (see the module docstring)."""

    def __init__(
        self,
        files: list[str],
        stream: int,
        streams: int,
        *,
        batch_size: int,
        max_seq_length: int,
        seed: int,
        block: int,
        skip_corrupt: bool = False,
        position: Position | None = None,
    ):
        self.files, self.stream, self.streams = files, stream, streams
        self.batch_size, self.max_seq_length = batch_size, max_seq_length
        self.seed, self.block, self.skip_corrupt = seed, block, skip_corrupt
        self.pos = position or Position()
        self.corrupt = 0  # records skipped so far (skip_corrupt)

    def _files_of(self, epoch: int) -> tuple[list[str], int]:
        """(files this stream reads in `epoch`, record stride)."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.files))
        if len(self.files) >= self.streams:
            return [self.files[i] for i in perm[self.stream :: self.streams]], 1
        return [self.files[i] for i in perm], self.streams

    def _read_block(self, path: str, offset: int, record: int, stride: int):
        """Up to `block` kept records from `offset`: (payloads, offset after, record index after)."""
        it = iter_records(path, skip_corrupt=self.skip_corrupt, start_offset=offset)
        kept: list[bytes] = []
        end, index = offset, record
        try:
            for off, payload in it:
                if index % stride == self.stream % stride:
                    kept.append(payload)
                index += 1
                end = off + len(payload) + 16
                if len(kept) == self.block:
                    break
            else:
                end = -1  # end of file
        finally:
            self.corrupt += it.corrupt
            it.close()
        return kept, end, index

    def records(self) -> Iterator[bytes]:
        """Payloads forever, updating self.pos after each."""
        empty_epochs = 0
        while True:
            files, stride = self._files_of(self.pos.epoch)
            produced = False
            while self.pos.file < len(files):
                path = files[self.pos.file]
                block, end, index = self._read_block(path, self.pos.offset, self.pos.record, stride)
                order = np.random.default_rng(
                    [self.seed, self.pos.epoch, self.stream, self.pos.file, self.pos.offset]
                ).permutation(len(block))
                for i in order[self.pos.taken :]:
                    self.pos.taken += 1
                    produced = True
                    yield block[i]
                if end < 0:
                    self.pos = Position(self.pos.epoch, self.pos.file + 1)
                else:
                    self.pos = Position(self.pos.epoch, self.pos.file, end, index)
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs >= 2:
                raise UserError(
                    "no records to read",
                    where=", ".join(self.files[:3]),
                    fix="the TFRecord files are empty (or every record is corrupt)",
                )
            self.pos = Position(self.pos.epoch + 1)

    def batches(self) -> Iterator[dict]:
        records = self.records()
        source = self.files[0] if len(self.files) == 1 else f"{Path(self.files[0]).parent}/*"
        while True:
            payloads = []
            for payload in records:
                payloads.append(payload)
                if len(payloads) == self.batch_size:
                    break
            batch = payloads_to_batch(payloads, self.max_seq_length, source, f"stream {self.stream}, {self.pos}")
            batch["meta"] = {"stream": self.stream, "position": asdict(self.pos), "corrupt": self.corrupt}
            yield batch


class StreamDataset(torch.utils.data.IterableDataset):
    """Worker w of the DataLoader plays stream mine[(w + rotation) % len(mine)], so a resumed loader whose
    first batch is this rank's batch b (rotation = b % len(mine)) continues the round-robin exactly where it
    stopped. One process: mine = all S streams. Rank r of W: streams r, r + W, ..., so its k-th batch is
    batch k * W + r of the one-process sequence (stream (k * W + r) % S)."""

    def __init__(
        self, files: list[str], streams: int, positions: list[dict | None], rotation: int, mine: list[int], **kw
    ):
        self.files, self.streams, self.positions, self.rotation, self.kw = files, streams, positions, rotation, kw
        self.mine = mine

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        workers = [info.id] if info is not None else list(range(len(self.mine)))
        its = []
        for w in workers:
            s = self.mine[(w + self.rotation) % len(self.mine)]
            pos = self.positions[s]
            its.append(
                Stream(self.files, s, self.streams, position=Position(**pos) if pos else None, **self.kw).batches()
            )
        while True:  # in-process (num_workers=0): round-robin over all streams, like the DataLoader does
            for it in its:
                try:
                    yield next(it)
                except (UserError, CorruptRecordError) as exc:
                    # Pass it in-band: a DataLoader re-raise would bury the one-line message in a traceback.
                    yield {
                        "error": {
                            "what": exc.what,
                            "where": exc.where,
                            "fix": exc.fix,
                            "corrupt": isinstance(exc, CorruptRecordError),
                        }
                    }
                    return


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process under torch.distributed, (0, 1) without it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def dynamic_manifest(files: list[str]) -> str | None:
    """The manifest of dynamic pretraining data if that is what `files` names (one manifest.json, or one
    directory holding a dynamic manifest), else None."""
    import json

    if len(files) != 1:
        return None
    path = Path(files[0])
    path = path / "manifest.json" if path.is_dir() else path
    if path.name != "manifest.json" or not path.is_file():
        return None
    try:
        return str(path) if json.loads(path.read_text()).get("mode") == "dynamic" else None
    except (OSError, ValueError):
        return None


def features_to_batch(f: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """google's feature arrays of a micro-batch (dynamic masking) -> model inputs, as to_batch makes them."""
    return {
        "input_ids": torch.from_numpy(f["input_ids"]),
        "attention_mask": torch.from_numpy(f["input_mask"]),
        "token_type_ids": torch.from_numpy(f["segment_ids"]),
        "mlm_positions": torch.from_numpy(f["masked_lm_positions"]),
        "mlm_ids": torch.from_numpy(f["masked_lm_ids"]),
        "mlm_weights": torch.from_numpy(np.ascontiguousarray(f["masked_lm_weights"])),
        "sop_labels": torch.from_numpy(f["next_sentence_labels"].reshape(-1)),
    }


class DynamicDataset(torch.utils.data.IterableDataset):
    """Micro-batches masked on the fly (albert_exp.pretraining_data.dynamic), a pure function of the index.

    Global micro-batch g holds instances [g * micro, (g + 1) * micro) of the endless sequence. Rank r of W
    takes g = k * W + r as its k-th micro-batch, so a global step (W ranks x A accumulation micro-batches)
    holds the same instances as one process with W * A accumulation steps: the trajectory does not depend on
    the world size. Loader worker w of n makes the rank's micro-batches k = start + w, start + w + n, ...,
    which the DataLoader's round-robin returns in order k = start, start + 1, ...: the batches do not depend
    on the number of workers either. `start`: micro-batches this rank already consumed (resume)."""

    def __init__(self, manifest: str, *, micro: int, start: int, rank: int, world: int, max_seq_length: int, hint):
        from albert_exp.pretraining_data.dynamic import DynamicSource

        self.source = DynamicSource(manifest)
        if self.source.params.max_seq_length != max_seq_length:
            raise UserError(
                f"the dynamic pretraining data was made for sequence length {self.source.params.max_seq_length}, "
                f"the config says {max_seq_length}",
                where=manifest,
                fix=f"set pretrain.max_seq_length={self.source.params.max_seq_length}",
            )
        if hint:
            self.source.cursor = tuple(hint)
        self.micro, self.start, self.rank, self.world = micro, start, rank, world

    def batch(self, k: int) -> dict:
        g = k * self.world + self.rank
        f, _, epoch = self.source.instances(g * self.micro, self.micro)
        batch = features_to_batch(f)
        batch["meta"] = {"epoch": epoch, "cursor": list(self.source.cursor)}
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        k = self.start + w
        while True:
            try:
                batch = self.batch(k)
            except UserError as exc:
                yield {"error": {"what": exc.what, "where": exc.where, "fix": exc.fix, "corrupt": False}}
                return
            batch["meta"].update(stream=w, position={"batch": k + 1, "cursor": batch["meta"]["cursor"]}, corrupt=0)
            yield batch
            k += n


def make_loader(
    files: list[str],
    *,
    streams: int,
    positions: list[dict | None],
    batches_done: int,
    batch_size: int,
    max_seq_length: int,
    seed: int,
    block: int,
    skip_corrupt: bool,
):
    """A DataLoader of micro-batches; `streams` loader processes (0 processes when streams == 1 is not
    forced: one stream is read in-process). Dynamic data (`files` = its manifest): masked on the fly, this
    rank's share of the global sequence (DynamicDataset)."""
    rank, world = rank_world()
    manifest = dynamic_manifest(files)
    if manifest:
        workers = streams if streams > 1 else 0
        hints = [p["cursor"] for p in positions if p and "cursor" in p]
        dataset = DynamicDataset(
            manifest,
            micro=batch_size,
            start=batches_done,
            rank=rank,
            world=world,
            max_seq_length=max_seq_length,
            hint=min(hints, key=lambda c: c[2]) if hints else None,  # any cursor at or before start will do
        )
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            pin_memory=torch.cuda.is_available(),  # page-locked: the non_blocking copy to the GPU overlaps
        )
    mine = list(range(rank, streams, world))  # ddp.Dist.check: world divides streams
    workers = len(mine) if len(mine) > 1 else 0
    dataset = StreamDataset(
        files,
        streams,
        positions,
        batches_done % len(mine),
        mine,
        batch_size=batch_size,
        max_seq_length=max_seq_length,
        seed=seed,
        block=block,
        skip_corrupt=skip_corrupt,
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def raise_if_error(batch: dict) -> None:
    if "error" in batch:
        e = batch["error"]
        cls = CorruptRecordError if e["corrupt"] else UserError
        raise cls(e["what"], where=e["where"], fix=e["fix"])


def resolve_eval_inputs(inputs: list[str]) -> list[str]:
    """pretrain.eval_input -> [dynamic manifest] (held-out documents made with --mode dynamic) or TFRecords."""
    if not inputs:
        return []
    manifest = dynamic_manifest(inputs)
    return [manifest] if manifest else expand_inputs(inputs, "pretrain.eval_input")


def eval_batches(files: list[str], *, n: int, batch_size: int, max_seq_length: int) -> list[dict]:
    """The first n batches of the held-out files in file order (the same every time: comparable eval/).
    Dynamic held-out data: its first n micro-batches of epoch 0 (fixed by its seed)."""
    manifest = dynamic_manifest(files)
    if manifest:
        ds = DynamicDataset(
            manifest, micro=batch_size, start=0, rank=0, world=1, max_seq_length=max_seq_length, hint=None
        )
        return [{k: v for k, v in ds.batch(k).items() if k != "meta"} for k in range(n)]
    stream = Stream(
        files, 0, 1, batch_size=batch_size, max_seq_length=max_seq_length, seed=0, block=1
    )  # block 1: no shuffling
    stream._files_of = lambda epoch: (files, 1)  # fixed order
    out = []
    for batch in stream.batches():
        batch.pop("meta")
        out.append(batch)
        if len(out) == n or stream.pos.epoch > 0:
            break
    return out
