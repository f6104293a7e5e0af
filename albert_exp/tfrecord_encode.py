"""Compiled (numba) serialization of `tf.train.Example` batches and TFRecord framing, for `tfrecord.encode_batch`.

The pretraining-data stage writes ~15 records per input line, 8 KB per line: at 200M lines the per-record
work (varints, nested lengths, two CRC-32Cs) dominates unless it runs as machine code. `write_example` writes
one row (sizes first, then bytes, header and CRCs); `encode_rows` serializes a batch of feature matrices into
one exact allocation, and the pretraining-data kernel (pretraining_data/masking.py) calls `write_example` on
each instance it builds. Byte-identical to `tfrecord.encode_example` (tests/test_tfrecord.py checks it).
Kernels are cached on disk (`cache=True`): only the first run after a change compiles (a few seconds).
"""

from __future__ import annotations

import numba
import numpy as np

_CRC_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_MASK_DELTA = 0xA282EAD8


def _crc_tables() -> np.ndarray:
    """Slicing-by-8 tables: t[k][b] is the CRC of byte b followed by k zero bytes."""
    t = np.zeros((8, 256), dtype=np.uint32)
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ (_CRC_POLY if c & 1 else 0)
        t[0, b] = c
    for k in range(1, 8):
        t[k] = (t[k - 1] >> 8) ^ t[0][t[k - 1] & 0xFF]
    return t


CRC_TABLES = _crc_tables()


@numba.njit(cache=True, inline="always")
def _crc32c(buf, lo, hi, t):
    """Masked CRC-32C of buf[lo:hi], as uint64 below 2**32 (kept in uint64: numba widens uint32 arithmetic)."""
    m8, m32 = np.uint64(0xFF), np.uint64(0xFFFFFFFF)
    crc = m32
    i = lo
    while i + 8 <= hi:  # 8 bytes per step through 8 tables (~4x the byte-at-a-time loop)
        crc ^= (
            np.uint64(buf[i])
            | (np.uint64(buf[i + 1]) << np.uint64(8))
            | (np.uint64(buf[i + 2]) << np.uint64(16))
            | (np.uint64(buf[i + 3]) << np.uint64(24))
        )
        crc = np.uint64(
            t[7, crc & m8]
            ^ t[6, (crc >> np.uint64(8)) & m8]
            ^ t[5, (crc >> np.uint64(16)) & m8]
            ^ t[4, crc >> np.uint64(24)]
            ^ t[3, buf[i + 4]]
            ^ t[2, buf[i + 5]]
            ^ t[1, buf[i + 6]]
            ^ t[0, buf[i + 7]]
        )
        i += 8
    while i < hi:
        crc = np.uint64(t[0, (crc ^ np.uint64(buf[i])) & m8]) ^ (crc >> np.uint64(8))
        i += 1
    crc ^= m32
    return (((crc >> np.uint64(15)) | (crc << np.uint64(17))) + np.uint64(_MASK_DELTA)) & m32


@numba.njit(cache=True)
def masked_crc32c(buf: np.ndarray, t: np.ndarray) -> int:
    """TFRecord's masked CRC-32C of a uint8 array (for tests against the crc32c package)."""
    return _crc32c(buf, 0, buf.size, t)


@numba.njit(cache=True, inline="always")
def _vsize(v):
    """Bytes of a varint of v (uint64): branch-free below 2**28, the sizes of nested message lengths."""
    if v >= np.uint64(1 << 28):  # rare, and predictable
        s = 5
        v >>= np.uint64(35)
        while v:
            v >>= np.uint64(7)
            s += 1
        return s
    return 1 + np.int64(v >= np.uint64(1 << 7)) + np.int64(v >= np.uint64(1 << 14)) + np.int64(v >= np.uint64(1 << 21))


@numba.njit(cache=True, inline="always")
def _put(buf, pos, v):
    """Write varint v (uint64) at pos; returns the position after it."""
    while v >= np.uint64(0x80):
        buf[pos] = np.uint8((v & np.uint64(0x7F)) | np.uint64(0x80))
        v >>= np.uint64(7)
        pos += 1
    buf[pos] = np.uint8(v)
    return pos + 1


@numba.njit(cache=True, inline="always")
def _packed_size(c, i):
    """Bytes of the varints of row i of c. Branch-free (so vectorised) unless a value reaches 2**28."""
    s = 0
    big = False
    for j in range(c.shape[1]):
        v = np.uint64(c[i, j])
        s += (
            1 + np.int64(v >= np.uint64(1 << 7)) + np.int64(v >= np.uint64(1 << 14)) + np.int64(v >= np.uint64(1 << 21))
        )
        big |= v >= np.uint64(1 << 28)
    if big:
        s = 0
        for j in range(c.shape[1]):
            s += _vsize(np.uint64(c[i, j]))
    return s


@numba.njit(cache=True, inline="always")
def _lengths(p, klen):
    """Lengths of the nested messages of one feature whose packed values take p bytes: (list, Feature, map
    entry). An empty list is an XList with no field (length 0), as protobuf writes it."""
    lst = 1 + _vsize(np.uint64(p)) + p if p else 0
    feat = 1 + _vsize(np.uint64(lst)) + lst
    entry = 1 + _vsize(np.uint64(klen)) + klen + 1 + _vsize(np.uint64(feat)) + feat
    return lst, feat, entry


@numba.njit(cache=True, inline="always")
def _body_size(cols, i, is_float, key_off, packed):
    """Bytes of row i's Features message; fills packed[f] with the bytes of feature f's packed values."""
    body = 0
    for f in range(len(is_float)):
        c = cols[f]
        width = c.shape[1]
        p = 4 * width if is_float[f] else _packed_size(c, i)
        packed[f] = p
        entry = _lengths(p, key_off[f + 1] - key_off[f])[2]
        body += 1 + _vsize(np.uint64(entry)) + entry
    return body


@numba.njit(cache=True, inline="always")
def write_example(buf, pos, cols, i, is_float, keys, key_off, framed, t, packed):
    """Write row i of `cols` (int64 [N, L_f]; float features as float32 bit patterns) as one Example at
    buf[pos:], framed as a TFRecord if `framed`; returns the position after it. packed: scratch [F]."""
    body = _body_size(cols, i, is_float, key_off, packed)
    size = 1 + _vsize(np.uint64(body)) + body
    if framed:
        for k in range(8):
            buf[pos + k] = np.uint8((size >> (8 * k)) & 0xFF)
        crc = _crc32c(buf, pos, pos + 8, t)
        for k in range(4):
            buf[pos + 8 + k] = np.uint8((crc >> np.uint64(8 * k)) & np.uint64(0xFF))
        pos += 12
    start = pos
    buf[pos] = 0x0A  # Example.features (field 1, length-delimited)
    pos = _put(buf, pos + 1, np.uint64(body))
    for f in range(len(is_float)):
        p = packed[f]
        klen = key_off[f + 1] - key_off[f]
        lst, feat, entry = _lengths(p, klen)
        buf[pos] = 0x0A  # Features.feature map entry
        pos = _put(buf, pos + 1, np.uint64(entry))
        buf[pos] = 0x0A  # entry key
        pos = _put(buf, pos + 1, np.uint64(klen))
        for k in range(klen):
            buf[pos + k] = keys[key_off[f] + k]
        pos += klen
        buf[pos] = 0x12  # entry value: Feature
        pos = _put(buf, pos + 1, np.uint64(feat))
        buf[pos] = 0x12 if is_float[f] else 0x1A  # float_list = 2, int64_list = 3
        pos = _put(buf, pos + 1, np.uint64(lst))
        if p == 0:
            continue
        buf[pos] = 0x0A  # packed values
        pos = _put(buf, pos + 1, np.uint64(p))
        c = cols[f]
        if is_float[f]:
            for j in range(c.shape[1]):
                bits = c[i, j]
                for k in range(4):
                    buf[pos + k] = np.uint8((bits >> (8 * k)) & 0xFF)
                pos += 4
        elif p == c.shape[1]:  # every value < 128 (masks, segment ids, positions...): one byte each, no chain
            for j in range(p):
                buf[pos + j] = np.uint8(c[i, j])
            pos += p
        else:
            for j in range(c.shape[1]):
                pos = _put(buf, pos, np.uint64(c[i, j]))
    if framed:
        crc = _crc32c(buf, start, pos, t)
        for k in range(4):
            buf[pos + k] = np.uint8((crc >> np.uint64(8 * k)) & np.uint64(0xFF))
        pos += 4
    return pos


def max_example_bytes(widths: list[int], is_float: list[bool], key_lengths: list[int]) -> int:
    """An upper bound of one framed record's bytes (10-byte varints everywhere), to size reused buffers."""
    body = sum(5 * 11 + k + (4 if f else 10) * w for w, f, k in zip(widths, is_float, key_lengths, strict=True))
    return 16 + 11 + body


@numba.njit(cache=True)
def encode_rows(cols, is_float, keys, key_off, framed, t):
    """Serialize row i of every column matrix in `cols` (int64 [N, L_f]; float features hold their float32
    bit patterns) as one Example per row. Returns (uint8 bytes, int64 offsets [N + 1])."""
    n = cols[0].shape[0]
    packed = np.zeros(len(is_float), dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    extra = 16 if framed else 0
    for i in range(n):  # sizes first: the output is one exact allocation
        body = _body_size(cols, i, is_float, key_off, packed)
        offsets[i + 1] = offsets[i] + 1 + _vsize(np.uint64(body)) + body + extra
    buf = np.empty(offsets[-1], dtype=np.uint8)
    for i in range(n):
        write_example(buf, offsets[i], cols, i, is_float, keys, key_off, framed, t, packed)
    return buf, offsets
