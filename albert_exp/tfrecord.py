"""TFRecord files of `tf.train.Example`s, read and written without TensorFlow at run time.

    from albert_exp.tfrecord import FEATURES, encode_example, decode_example, write_records, iter_records

    info = write_records("out.tfrecord", [encode_example({"input_ids": ids, ...})])   # temp file + rename
    for offset, payload in iter_records("out.tfrecord"):            # GZIP files are detected by magic
        features = decode_example(payload)                          # {"input_ids": np.int64 array, ...}
    batch = decode_batch(payloads, {"input_ids": "int64", ...})     # compiled: {"input_ids": [N, L]} or None

A TFRecord is `uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`, all
little-endian. The protobuf wire format of `tf.train.Example` is written by hand because the generated
classes cost microseconds per field and the pretraining-data stage writes ~100k examples a second per core:
`encode_batch` serializes (and frames) a whole batch of examples in compiled code (`tfrecord_encode`);
`encode_example` is the plain-Python reference it is tested against, and `frame_records` adds the framing.
Reading is the same: `decode_batch` decodes a batch into feature matrices in compiled code (`tfrecord_decode`,
the static pretraining loader's reader), and `decode_example` is its reference and fallback.
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
from albert_exp.files import open_maybe_gzip

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
    """One serialized `tf.train.Example` (int64 or float lists; kind from FEATURES, else from the dtype).
    Plain Python, written straight from the wire format: the reference `encode_batch` is tested against."""
    body = bytearray()
    for name, values in features.items():
        if _feature_kind(name, values) == "float":
            packed = np.asarray(values, dtype="<f4").reshape(-1).tobytes()
            tag = _TAG_FLOAT
        else:
            packed = b"".join(_varint(v) for v in _as_u64(values).tolist())
            tag = _TAG_INT64
        lst = (bytes([_TAG_1]) + _varint(len(packed)) + packed) if packed else b""
        feat = bytes([tag]) + _varint(len(lst)) + lst
        key = name.encode("utf-8")
        entry = bytes([_TAG_1]) + _varint(len(key)) + key + bytes([_TAG_2]) + _varint(len(feat)) + feat
        body += bytes([_TAG_1]) + _varint(len(entry)) + entry
    return bytes([_TAG_1]) + _varint(len(body)) + bytes(body)


def encode_batch(arrays: dict[str, np.ndarray], framed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Serialize N examples at once. `arrays[name]` has shape [N, L_name] (integers, or floats for float
    features). Returns (bytes as uint8, offsets [N+1]): example i is `buf[offsets[i]:offsets[i+1]]`,
    byte-identical to `encode_example` row by row. With framed=True each example also carries its TFRecord
    header and footer, so `buf[offsets[i]:offsets[i+1]]` is record i as written to a file (the same bytes as
    `frame_records` of the unframed result). Runs as compiled code (albert_exp.tfrecord_encode)."""
    from albert_exp.tfrecord_encode import CRC_TABLES, encode_rows

    n = len(next(iter(arrays.values())))
    cols, is_float, keys = [], [], []
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[0] != n:
            raise ValueError(f"encode_batch: {name} has shape {a.shape}, expected [{n}, L]")
        flt = _feature_kind(name, a) == "float"
        # float features travel as their float32 bit patterns, so one int64 column type serves every feature
        cols.append(
            np.ascontiguousarray(a, dtype="<f4").view(np.uint32).astype(np.int64)
            if flt
            else np.ascontiguousarray(a, dtype=np.int64)
        )
        is_float.append(flt)
        keys.append(name.encode("utf-8"))
    key_off = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum([len(k) for k in keys], out=key_off[1:])
    key_bytes = np.frombuffer(b"".join(keys), dtype=np.uint8) if keys else np.zeros(0, dtype=np.uint8)
    if not cols:
        return np.zeros(0, dtype=np.uint8), np.zeros(n + 1, dtype=np.int64)
    return encode_rows(tuple(cols), np.array(is_float), key_bytes, key_off, framed, CRC_TABLES)


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


def decode_batch(payloads: list[bytes], kinds: dict[str, str]) -> dict[str, np.ndarray] | None:
    """Features `kinds` ({name: "int64" | "float"}) of N serialized Examples as [N, L] matrices (int64 /
    float32), decoded in compiled code (albert_exp.tfrecord_decode): the arrays that stacking `decode_example`'s
    would give. None where the compiled reader is not sure of that (another layout than the writers', a
    feature missing, repeated or of another type, rows of different lengths, a malformed record): decode those
    payloads with `decode_example`, which gives the same arrays or says what is wrong."""
    from albert_exp.tfrecord_decode import FLOAT, INT64, fill_bytes, fill_varints, locate

    names = list(kinds)
    keys = [n.encode("utf-8") for n in names]
    key_off = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum([len(k) for k in keys], out=key_off[1:])
    offsets = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads)), out=offsets[1:])
    buf = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    tags = np.array([FLOAT if kinds[n] == "float" else INT64 for n in names], dtype=np.uint8)
    spans = np.full((len(payloads), len(names), 3), -1, dtype=np.int64)
    if not payloads or locate(buf, offsets, np.frombuffer(b"".join(keys), np.uint8), key_off, tags, spans) >= 0:
        return None
    out = {}
    for f, name in enumerate(names):
        counts = spans[:, f, 2]
        width = int(counts[0])
        if (counts != width).any():
            return None
        sp = np.ascontiguousarray(spans[:, f])
        if kinds[name] == "float":
            out[name] = fill_bytes(buf, sp, 4 * width).view("<f4").astype(np.float32, copy=False)
            continue
        values, ok = fill_varints(buf, sp, width)
        if not ok:
            return None
        out[name] = values.view(np.int64)
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
        self._f = open_maybe_gzip(self.path)
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
