"""TFRecord files of `tf.train.Example`s, read and written without TensorFlow at run time.

    from albert_exp.tfrecord import FEATURES, encode_example, decode_example, write_records, iter_records

    info = write_records("out.tfrecord", [encode_example({"input_ids": ids, ...})])   # temp file + rename
    for offset, payload in iter_records("out.tfrecord"):            # GZIP files are detected by magic
        features = decode_example(payload)                          # {"input_ids": np.int64 array, ...}

A TFRecord is `uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`, all
little-endian. The protobuf wire format of `tf.train.Example` is written by hand because the generated
classes cost microseconds per field and the pretraining-data stage writes ~100k examples a second per core:
`encode_batch` builds a whole batch of examples with numpy (every tag, key byte and length is a varint item of
a fixed layout, so lengths are column sums), and `frame_records` adds the record framing.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import crc32c as _crc32c
import numpy as np

from albert_exp.errors import UserError

# google-research/albert create_pretraining_data.py: name -> (kind, length), where "seq" is max_seq_length
# and "pred" is max_predictions_per_seq. Order as google writes them (the map order does not matter to TF).
FEATURES: dict[str, tuple[str, str | int]] = {
    "input_ids": ("int64", "seq"),
    "input_mask": ("int64", "seq"),
    "segment_ids": ("int64", "seq"),
    "token_boundary": ("int64", "seq"),
    "masked_lm_positions": ("int64", "pred"),
    "masked_lm_ids": ("int64", "pred"),
    "masked_lm_weights": ("float", "pred"),
    "next_sentence_labels": ("int64", 1),
}

_MASK_DELTA = 0xA282EAD8
_GZIP_MAGIC = b"\x1f\x8b"
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
# Protobuf tags (field << 3 | wire type): Example.features=1, Features.feature=1 (map entry key=1, value=2),
# Feature.bytes_list=1 / float_list=2 / int64_list=3, XList.value=1 (packed: wire type 2).
_LEN = 2
_TAG_BYTES, _TAG_FLOAT, _TAG_INT64 = (1 << 3) | _LEN, (2 << 3) | _LEN, (3 << 3) | _LEN
_TAG_1 = (1 << 3) | _LEN  # field 1, length-delimited (Example.features, map entry, key, packed values)
_TAG_2 = (2 << 3) | _LEN  # field 2, length-delimited (map entry value)


class CorruptRecordError(UserError):
    """A TFRecord whose framing or checksum is wrong: names the file, the byte offset and what is wrong."""


def masked_crc(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC-32C (rotated so that CRCs of CRCs stay distinct)."""
    crc = _crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------------
# Varints


_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def _varint_sizes(v: np.ndarray) -> np.ndarray:
    """Bytes taken by each uint64 as a varint (1..10)."""
    return 1 + (v[..., None] >= _VARINT_LIMITS).sum(axis=-1, dtype=np.int64)


def _emit(items: np.ndarray, raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode a flat uint64 array as varints (or as single raw bytes where `raw`). Returns (bytes, sizes)."""
    sizes = _varint_sizes(items)
    if raw is not None:
        sizes[raw] = 1
    total = int(sizes.sum())
    starts = np.cumsum(sizes) - sizes
    rep = np.repeat(items, sizes)
    j = (np.arange(total, dtype=np.int64) - np.repeat(starts, sizes)).astype(np.uint64)
    out = (rep >> (np.uint64(7) * j)) & np.uint64(0x7F)
    cont = j < np.repeat(sizes - 1, sizes).astype(np.uint64)
    out |= cont.astype(np.uint64) << np.uint64(7)
    if raw is not None:
        rraw = np.repeat(raw, sizes)
        out[rraw] = rep[rraw] & np.uint64(0xFF)
    return out.astype(np.uint8), sizes


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # negative int64 -> 10-byte two's complement, as protobuf does
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _as_u64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1).view(np.uint64)


# ----------------------------------------------------------------------------------------------------------
# tf.train.Example encoding


def _feature_kind(name: str, values) -> str:
    if name in FEATURES:
        return FEATURES[name][0]
    arr = np.asarray(values)
    return "float" if arr.dtype.kind == "f" else "int64"


def encode_example(features: dict[str, np.ndarray | list]) -> bytes:
    """One serialized `tf.train.Example` (int64 or float lists; kind from FEATURES, else from the dtype)."""
    body = bytearray()
    for name, values in features.items():
        if _feature_kind(name, values) == "float":
            packed = np.asarray(values, dtype="<f4").reshape(-1).tobytes()
            tag = _TAG_FLOAT
        else:
            packed = _emit(_as_u64(values))[0].tobytes()
            tag = _TAG_INT64
        lst = (bytes([_TAG_1]) + _varint(len(packed)) + packed) if packed else b""
        feat = bytes([tag]) + _varint(len(lst)) + lst
        key = name.encode("utf-8")
        entry = bytes([_TAG_1]) + _varint(len(key)) + key + bytes([_TAG_2]) + _varint(len(feat)) + feat
        body += bytes([_TAG_1]) + _varint(len(entry)) + entry
    return bytes([_TAG_1]) + _varint(len(body)) + bytes(body)


def _sizes(v: np.ndarray) -> np.ndarray:
    """Varint sizes (uint8) of non-negative values below 2**63 or of uint64 views."""
    v = v.astype(np.uint64, copy=False)
    top = int(v.max()) if v.size else 0
    sizes = np.ones(v.shape, dtype=np.uint8)
    for t in _VARINT_LIMITS.tolist():
        if t > top:
            break
        sizes += v >= np.uint64(t)
    return sizes


def _put_varints(mat: np.ndarray, keep: np.ndarray, lo: int, width: int, values: np.ndarray, sizes: np.ndarray) -> None:
    """Write varints of `values` ([N] or [N, L]) into `width`-byte slots from column `lo`; mark used bytes."""
    n = mat.shape[0]
    count = values.size // n
    slots = mat[:, lo : lo + count * width].reshape(n, count, width)
    used = keep[:, lo : lo + count * width].reshape(n, count, width)
    if width == 1:
        slots[:, :, 0] = values.reshape(n, count)
        return
    v = values.reshape(n, count).astype(np.uint64, copy=False)
    sz = sizes.reshape(n, count)
    if width <= 4:  # the usual case (values < 2**28): byte by byte in uint32/uint8, ~12x faster than uint64
        w = v.astype(np.uint32)
        for j in range(width):
            b = (w >> (7 * j)).astype(np.uint8) & 0x7F if j else w.astype(np.uint8) & 0x7F
            if j + 1 < width:
                b |= (sz > j + 1).view(np.uint8) << 7
            slots[:, :, j] = b
            if j:  # byte 0 is always used (keep starts all True)
                used[:, :, j] = sz > j
        return
    for j in range(width):
        byte = ((v >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        slots[:, :, j] = byte | ((sz > j + 1).astype(np.uint8) << 7)
        used[:, :, j] = sz > j


def encode_batch(arrays: dict[str, np.ndarray], framed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Serialize N examples at once. `arrays[name]` has shape [N, L_name] (integers, or float32 for float
    features). Returns (bytes as uint8, offsets [N+1]): example i is `buf[offsets[i]:offsets[i+1]]`,
    byte-identical to `encode_example` row by row.

    Each example is laid out in a padded row (constant tags and keys from a template, every varint in a slot
    as wide as the widest value of its column group), then the unused slot bytes are dropped in one pass.
    With framed=True each row also carries its TFRecord header and footer, so `buf[offsets[i]:offsets[i+1]]`
    is record i as written to a file (the same bytes as `frame_records` of the unframed result)."""
    n = len(next(iter(arrays.values())))
    feats = []  # (key bytes, is_float, values (uint64 view or raw bytes), sizes, packed length [N])
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[0] != n:
            raise ValueError(f"encode_batch: {name} has shape {a.shape}, expected [{n}, L]")
        if _feature_kind(name, a) == "float":
            raw = np.ascontiguousarray(a, dtype="<f4").view(np.uint8).reshape(n, -1)
            feats.append((name.encode(), True, raw, None, np.full(n, raw.shape[1], dtype=np.int64)))
        elif a.size and a.dtype.kind in "iub" and a.min() >= 0 and a.max() < 0x80:
            # One byte per value (masks, segment ids, labels, positions): no varint arithmetic at all.
            feats.append((name.encode(), False, a, None, np.full(n, a.shape[1], dtype=np.int64)))
        else:
            v = a.astype(np.int64, copy=False).view(np.uint64)
            sz = _sizes(v)
            feats.append((name.encode(), False, v, sz, sz.sum(axis=1, dtype=np.int64)))
    # Lengths of the nested messages, innermost first (each [N]).
    total = np.zeros(n, dtype=np.int64)
    lens = []
    for key, _, _, _, packed in feats:
        lst = np.where(packed > 0, 1 + _sizes(packed) + packed, 0)
        feat = 1 + _sizes(lst) + lst
        entry = 2 + len(key) + 1 + _sizes(feat) + feat
        total += 1 + _sizes(entry) + entry
        lens.append((entry, feat, lst, packed))
    # Template row: constants set, varint slots (filled per row) recorded as (column, width, values, sizes).
    row: list[int] = []
    slots: list[tuple[int, int, np.ndarray, np.ndarray]] = []

    def slot(values: np.ndarray, sizes: np.ndarray | None = None, per_value: int = 1, single: bool = False) -> None:
        sizes = None if single else (_sizes(values) if sizes is None else sizes)
        width = 1 if sizes is None or not sizes.size else int(sizes.max())
        slots.append((len(row), width, values, sizes))
        row.extend([0] * (width * per_value))

    head, tail = (12, 4) if framed else (0, 0)  # TFRecord length + its CRC; data CRC
    row.extend([0] * head)
    row.append(_TAG_1)
    slot(total)
    fixed_parts = []  # (column, raw bytes [N, B]) for float values
    for (key, is_float, values, sizes, packed), (entry, feat, lst, _) in zip(feats, lens, strict=True):
        row.append(_TAG_1)
        slot(entry)
        row.extend([_TAG_1, len(key), *key, _TAG_2])
        slot(feat)
        row.append(_TAG_FLOAT if is_float else _TAG_INT64)
        slot(lst)
        if values.shape[1] == 0:  # an empty list: Feature holds an empty XList (length 0, no field)
            continue
        row.append(_TAG_1)
        slot(packed)
        if is_float:
            fixed_parts.append((len(row), values))
            row.extend([0] * values.shape[1])
        else:
            slot(values, sizes, per_value=values.shape[1], single=sizes is None)
    row.extend([0] * tail)
    template = np.array(row, dtype=np.uint8)
    mat = np.empty((n, template.size), dtype=np.uint8)
    mat[:] = template
    keep = np.ones_like(mat, dtype=bool)
    if framed:
        payload = 1 + _sizes(total).astype(np.int64) + total
        mat[:, :8] = payload.astype("<u8").view(np.uint8).reshape(n, 8)
        lengths, inverse = np.unique(payload, return_inverse=True)  # the header CRC depends on the length only
        head_crc = np.array([masked_crc(_U64.pack(int(x))) for x in lengths], dtype="<u4")
        mat[:, 8:12] = head_crc[inverse.reshape(-1)].view(np.uint8).reshape(n, 4)
    for col, raw in fixed_parts:
        mat[:, col : col + raw.shape[1]] = raw
    for col, width, values, sizes in slots:
        _put_varints(mat, keep, col, width, values, sizes)
    per_example = keep.sum(axis=1, dtype=np.int64)
    buf = mat.reshape(-1) if per_example.sum() == mat.size else np.compress(keep.reshape(-1), mat.reshape(-1))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_example, out=offsets[1:])
    if framed and n:
        mv, crc = memoryview(buf), _crc32c.crc32c
        crcs = np.fromiter(
            (crc(mv[lo + 12 : hi - 4]) for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)),
            dtype=np.uint64,
            count=n,
        )
        masked = (
            (((crcs >> np.uint64(15)) | (crcs << np.uint64(17))) + np.uint64(_MASK_DELTA)) & np.uint64(0xFFFFFFFF)
        ).astype("<u4")
        buf[(offsets[1:] - 4)[:, None] + np.arange(4)] = masked.view(np.uint8).reshape(n, 4)
    return buf, offsets


def frame_records(buf: np.ndarray | bytes, offsets: np.ndarray) -> bytes:
    """TFRecord framing for consecutive payloads `buf[offsets[i]:offsets[i+1]]`, as one bytes object."""
    mv = memoryview(np.asarray(buf, dtype=np.uint8) if not isinstance(buf, bytes) else buf).cast("B")
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    heads = {}  # the header depends on the length only: a few hundred distinct ones per batch
    for n in np.unique(lengths).tolist():
        head = _U64.pack(n)
        heads[n] = head + _U32.pack(masked_crc(head))
    crc, pack_i = _crc32c.crc32c, _U32.pack
    parts = []
    for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        data = mv[lo:hi]
        c = crc(data)
        parts += (heads[hi - lo], data, pack_i((((c >> 15) | (c << 17)) + _MASK_DELTA) & 0xFFFFFFFF))
    return b"".join(parts)


# ----------------------------------------------------------------------------------------------------------
# tf.train.Example decoding


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _decode_varints(chunk: bytes) -> np.ndarray:
    """Packed varints -> int64, vectorised (a value ends at each byte below 0x80)."""
    b = np.frombuffer(chunk, dtype=np.uint8)
    if chunk.isascii():  # every byte < 0x80: one value per byte (ids < 128, masks, labels)
        return b.astype(np.int64)
    if b[-1] & 0x80:
        raise ValueError("truncated varint")
    ends = np.flatnonzero(b < 0x80)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    idx = np.arange(b.size)
    shift = (idx - np.repeat(starts, ends - starts + 1)).astype(np.uint64) * np.uint64(7)
    vals = (b.astype(np.uint64) & np.uint64(0x7F)) << shift
    return np.add.reduceat(vals, starts).view(np.int64)


def _fields(data: bytes, lo: int, hi: int) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message; length-delimited values as (start, end)."""
    pos = lo
    while pos < hi:
        tag, pos = _read_varint(data, pos)
        field, wt = tag >> 3, tag & 7
        if wt == 0:
            val, pos = _read_varint(data, pos)
            yield field, wt, val
        elif wt == 2:
            n, pos = _read_varint(data, pos)
            if pos + n > hi:
                raise ValueError("length-delimited field runs past its message")
            yield field, wt, (pos, pos + n)
            pos += n
        elif wt == 5:
            yield field, wt, data[pos : pos + 4]
            pos += 4
        elif wt == 1:
            yield field, wt, data[pos : pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wt}")
    if pos != hi:
        raise ValueError("message runs past its length")


def _decode_list(data: bytes, lo: int, hi: int, kind: int):
    if kind != 1 and lo < hi and data[lo] == _TAG_1:  # the usual packed list: one field 1 with all values
        _, _, plo, phi = _len_field(data, lo, hi)
        if phi == hi:
            return (
                _decode_varints(data[plo:phi])
                if kind == 3
                else np.frombuffer(data[plo:phi], dtype="<f4").astype(np.float32)
            )
    ints: list[np.ndarray] = []
    for field, wt, val in _fields(data, lo, hi):
        if field != 1:
            continue
        if kind == 3:  # Int64List: packed (wt 2) or one varint per value (wt 0)
            ints.append(
                _decode_varints(data[val[0] : val[1]]) if wt == 2 else np.array([val], dtype=np.uint64).view(np.int64)
            )
        elif kind == 2:  # FloatList: packed fixed32 or one fixed32 per value
            ints.append(np.frombuffer(data[val[0] : val[1]] if wt == 2 else val, dtype="<f4"))
        else:  # BytesList
            ints.append(data[val[0] : val[1]])
    if kind == 1:
        return ints
    dtype = np.int64 if kind == 3 else np.float32
    return np.concatenate(ints).astype(dtype, copy=False) if ints else np.zeros(0, dtype=dtype)


def _len_field(data: bytes, pos: int, hi: int) -> tuple[int, int, int, int]:
    """(field, wire type, start, end) of a length-delimited field at `pos`; other wire types are skipped."""
    tag = data[pos]
    pos += 1
    if tag >= 0x80:
        tag, pos = _read_varint(data, pos - 1)
    wt = tag & 7
    if wt == 2:
        n = data[pos]
        pos += 1
        if n >= 0x80:
            n, pos = _read_varint(data, pos - 1)
        if pos + n > hi:
            raise ValueError("length-delimited field runs past its message")
        return tag >> 3, wt, pos, pos + n
    if wt == 0:
        _, pos = _read_varint(data, pos)
    elif wt in (1, 5):
        pos += 8 if wt == 1 else 4
    else:
        raise ValueError(f"unsupported wire type {wt}")
    return tag >> 3, wt, pos, pos


def decode_example(data: bytes) -> dict[str, np.ndarray]:
    """A serialized `tf.train.Example` -> {name: np.int64 array | np.float32 array | list of bytes}."""
    data = bytes(data)
    out: dict[str, np.ndarray] = {}
    try:
        pos, end = 0, len(data)
        while pos < end:  # Example: field 1 = Features
            f, wt, flo, fhi = _len_field(data, pos, end)
            pos = fhi
            if f != 1 or wt != 2:
                continue
            while flo < fhi:  # Features: field 1 = map entry {1: key, 2: Feature}
                f2, w2, elo, ehi = _len_field(data, flo, fhi)
                flo = ehi
                if f2 != 1 or w2 != 2:
                    continue
                key, value = "", None
                while elo < ehi:
                    f3, w3, vlo, vhi = _len_field(data, elo, ehi)
                    elo = vhi
                    if f3 == 1 and w3 == 2:
                        key = data[vlo:vhi].decode("utf-8")
                    elif f3 == 2 and w3 == 2:
                        while vlo < vhi:  # Feature: oneof bytes_list=1, float_list=2, int64_list=3
                            kind, w4, llo, lhi = _len_field(data, vlo, vhi)
                            vlo = lhi
                            if w4 == 2:
                                value = _decode_list(data, llo, lhi, kind)
                out[key] = value if value is not None else np.zeros(0, dtype=np.int64)
            if flo != fhi:
                raise ValueError("message runs past its length")
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a valid tf.train.Example: {exc}") from None
    return out


# ----------------------------------------------------------------------------------------------------------
# Files


class _HashingFile:
    def __init__(self, f):
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.bytes += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


class RecordWriter:
    """Streams records to `path` through a temporary file that is renamed on a clean close.

    GZIP output (compress=True) has a fixed header (mtime 0, no name), so equal records give equal bytes.
    Level 1: on pretraining records it gives 21% of the size at 0.4x the CPU of level 6 (16.8%).
    `close()` returns {"records", "sha256", "bytes"} of the file as written (compressed bytes if compressed).
    """

    def __init__(self, path: str | Path, compress: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._raw = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._hash = _HashingFile(self._raw)
        self._out = (
            gzip.GzipFile(fileobj=self._hash, mode="wb", compresslevel=1, mtime=0, filename="")
            if compress
            else self._hash
        )
        self.records = 0

    def write(self, payload: bytes) -> None:
        head = _U64.pack(len(payload))
        self._out.write(head + _U32.pack(masked_crc(head)) + payload + _U32.pack(masked_crc(payload)))
        self.records += 1

    def write_framed(self, framed: bytes, count: int) -> None:
        """Append `count` records already framed (`frame_records`, or `encode_batch(..., framed=True)`)."""
        self._out.write(framed)
        self.records += count

    def close(self) -> dict:
        if self._out is not self._hash:
            self._out.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.tmp, self.path)
        return {"records": self.records, "sha256": self._hash.sha.hexdigest(), "bytes": self._hash.bytes}

    def abort(self) -> None:
        self._raw.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_records(path: str | Path, payloads: Iterable[bytes], compress: bool = False) -> dict:
    """Write TFRecords (temp file + rename). Returns {"records", "sha256", "bytes"} of the file."""
    writer = RecordWriter(path, compress=compress)
    try:
        for p in payloads:
            writer.write(p)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _open(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")  # noqa: SIM115


class RecordIterator:
    """Iterator of (byte offset, payload); `corrupt` counts records skipped with skip_corrupt=True.

    Offsets are positions in the uncompressed record stream (for GZIP files too). After a bad length CRC the
    length cannot be trusted, so with skip_corrupt the reader scans forward for the next valid header.
    """

    def __init__(self, path: str | Path, check_crc: bool = True, skip_corrupt: bool = False, start_offset: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError("TFRecord file not found", where=str(self.path), fix="check the path")
        self.check_crc, self.skip_corrupt = check_crc, skip_corrupt
        self.corrupt = 0
        self.errors: list[str] = []
        self._f = _open(self.path)
        self._pos = start_offset
        if start_offset:
            self._f.seek(start_offset)

    def __iter__(self) -> RecordIterator:
        return self

    def _fail(self, offset: int, what: str) -> None:
        err = CorruptRecordError(
            what, where=f"{self.path}@{offset}", fix="rewrite the file, or read with skip_corrupt=True to skip it"
        )
        if not self.skip_corrupt:
            self.close()
            raise err
        self.corrupt += 1
        self.errors.append(err.format())

    def _resync(self, offset: int) -> bool:
        """Find the next offset > `offset` with a valid header and data CRC; position the file there."""
        self._f.seek(offset + 1)
        rest = self._f.read()
        for i in range(len(rest) - 12 + 1):
            head = rest[i : i + 8]
            if _U32.unpack_from(rest, i + 8)[0] != masked_crc(head):
                continue
            (n,) = _U64.unpack(head)
            end = i + 12 + n + 4
            if end <= len(rest) and _U32.unpack_from(rest, end - 4)[0] == masked_crc(rest[i + 12 : end - 4]):
                self._pos = offset + 1 + i
                self._f.seek(self._pos)
                return True
        self._pos = offset + 1 + len(rest)
        return False

    def __next__(self) -> tuple[int, bytes]:
        while True:
            offset = self._pos
            head = self._f.read(12)
            if not head:
                self.close()
                raise StopIteration
            if len(head) < 12:
                self._fail(offset, f"truncated record header ({len(head)} of 12 bytes)")
                self.close()
                raise StopIteration
            (n,) = _U64.unpack_from(head)
            if self.check_crc and _U32.unpack_from(head, 8)[0] != masked_crc(head[:8]):
                self._fail(offset, "bad length CRC")
                if not self._resync(offset):
                    self.close()
                    raise StopIteration
                continue
            data = self._f.read(n)
            tail = self._f.read(4)
            self._pos = offset + 12 + len(data) + len(tail)
            if len(data) < n or len(tail) < 4:
                self._fail(
                    offset, f"truncated record (length {n}, {len(data) + len(tail)} of {n + 4} bytes after the header)"
                )
                self.close()
                raise StopIteration
            if self.check_crc and _U32.unpack(tail)[0] != masked_crc(data):
                self._fail(offset, "bad data CRC")
                continue
            return offset, data

    def close(self) -> None:
        self._f.close()


def iter_records(
    path: str | Path, *, check_crc: bool = True, skip_corrupt: bool = False, start_offset: int = 0
) -> RecordIterator:
    """(byte offset, payload) of each record in a TFRecord file, plain or GZIP (detected by magic)."""
    return RecordIterator(path, check_crc=check_crc, skip_corrupt=skip_corrupt, start_offset=start_offset)
