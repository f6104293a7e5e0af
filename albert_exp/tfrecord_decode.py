"""Compiled (numba) decoding of a batch of serialized `tf.train.Example`s into feature matrices, for
`tfrecord.decode_batch`, the static pretraining loader's reader.

Decoding example by example in Python (`tfrecord.decode_example`) costs ~55 us per sequence of 128 tokens,
~86% of the loader; here a batch costs ~1 us per sequence. Two passes over the batch's bytes:

* `locate` walks each Example (Features -> map entries -> Feature -> packed list) and notes where each wanted
  feature's packed values lie and how many values they hold. It accepts only the layout both writers produce
  (google's TensorFlow and ours: one Features field, map entries of key then value, one packed list per
  Feature) and checks everything `decode_example` would reject (bounds, truncated varints, float lists of a
  length that is not a multiple of 4, keys that are not ASCII). Anything else (another layout, a wanted
  feature missing, repeated or of another type) returns the index of the example, and the caller decodes
  the batch with `decode_example`, which gives the same arrays or the error.
* `fill_varints` / `fill_bytes` copy one feature's values into an [N, L] matrix: varints as uint64 (viewed
  as int64 by the caller: two's complement, as protobuf; a varint beyond 64 bits sends the batch to
  `decode_example` too), floats as their bytes (viewed as little-endian float32: the bits are kept, NaN
  payloads included).

Kernels are cached on disk (`cache=True`), like tfrecord_encode's.
"""

from __future__ import annotations

import numba
import numpy as np

_TAG_1 = 0x0A  # field 1, length-delimited: Example.features, Features.feature entry, entry key, packed list
_TAG_2 = 0x12  # field 2, length-delimited: entry value (Feature), Feature.float_list
_TAG_3 = 0x1A  # field 3, length-delimited: Feature.int64_list
FLOAT, INT64 = _TAG_2, _TAG_3  # the kinds `locate` is given, as the Feature's tag byte


@numba.njit(cache=True, inline="always")
def _varint(buf, pos, hi):
    """(value, position after) of the varint at buf[pos:hi]; position -1 if it runs past hi or 10 bytes."""
    v = np.uint64(0)
    for k in range(10):
        if pos >= hi:
            return v, -1
        b = buf[pos]
        pos += 1
        v |= np.uint64(b & 0x7F) << np.uint64(7 * k)
        if b < 0x80:
            return v, pos
    return v, -1


@numba.njit(cache=True, inline="always")
def _field(buf, pos, hi, tag):
    """(start, end) of the length-delimited field with tag byte `tag` at buf[pos:hi]; (-1, -1) if it is not
    there or runs past hi."""
    if pos >= hi or buf[pos] != tag:
        return -1, -1
    n, pos = _varint(buf, pos + 1, hi)
    if pos < 0 or n > np.uint64(hi - pos):
        return -1, -1
    return pos, pos + np.int64(n)


@numba.njit(cache=True, inline="always")
def _count(buf, lo, hi, tag):
    """Values in the packed list buf[lo:hi] of Feature kind `tag`; -1 where decode_example would reject it
    (a truncated varint; float bytes not a multiple of 4). Branch-free over the bytes (so vectorised)."""
    if tag == FLOAT:
        return (hi - lo) // 4 if (hi - lo) % 4 == 0 else -1
    if hi > lo and buf[hi - 1] >= 0x80:
        return -1
    n = 0
    for p in range(lo, hi):
        n += buf[p] < 0x80  # a varint ends at each byte below 0x80
    return n


@numba.njit(cache=True)
def _entry(buf, pos, end):
    """The map entry {1: key, 2: Feature} at buf[pos:end], in the writers' layout (the Feature holds one list
    holding one packed field): (where the next entry starts, key start, key end, the list's tag, values start,
    values end, how many values); a count of -1 where the entry has another layout."""
    elo, ehi = _field(buf, pos, end, _TAG_1)
    if elo < 0:
        return end, 0, 0, 0, 0, 0, -1
    klo, khi = _field(buf, elo, ehi, _TAG_1)
    flo, fhi = _field(buf, khi, ehi, _TAG_2) if klo >= 0 else (-1, -1)
    if flo < 0 or fhi != ehi or flo == fhi:
        return ehi, 0, 0, 0, 0, 0, -1
    tag = np.int64(buf[flo])
    llo, lhi = _field(buf, flo, fhi, tag)  # the Feature's one list
    if (tag != FLOAT and tag != INT64) or llo < 0 or lhi != fhi or llo == lhi:
        return ehi, 0, 0, 0, 0, 0, -1
    vlo, vhi = _field(buf, llo, lhi, _TAG_1)  # its one packed field
    if vlo < 0 or vhi != lhi:
        return ehi, 0, 0, 0, 0, 0, -1
    return ehi, klo, khi, tag, vlo, vhi, _count(buf, vlo, vhi, tag)


@numba.njit(cache=True)
def _wanted(buf, klo, khi, keys, key_off, n_feat):
    """Which wanted feature the key buf[klo:khi] names: its index, -1 (another feature, ASCII: skipped) or -2
    (another feature whose key is not ASCII: decode_example decides)."""
    for g in range(n_feat):
        klen = key_off[g + 1] - key_off[g]
        if klen == khi - klo:
            same = True
            for k in range(klen):
                if buf[klo + k] != keys[key_off[g] + k]:
                    same = False
                    break
            if same:
                return g
    for k in range(klo, khi):
        if buf[k] >= 0x80:
            return -2
    return -1


@numba.njit(cache=True)
def locate(buf, offsets, keys, key_off, kinds, spans):
    """Fill spans[i, f] = (start, end, values) of wanted feature f's packed values in example i
    (buf[offsets[i]:offsets[i + 1]]); wanted feature f is named keys[key_off[f]:key_off[f + 1]] and of kind
    kinds[f] (FLOAT or INT64). Returns -1, or the index of the first example that is not read here."""
    n_feat = len(kinds)
    for i in range(len(offsets) - 1):
        lo, hi = offsets[i], offsets[i + 1]
        pos, end = _field(buf, lo, hi, _TAG_1)  # Example.features
        if pos < 0 or end != hi:
            return i
        found = 0
        while pos < end:
            pos, klo, khi, tag, vlo, vhi, count = _entry(buf, pos, end)
            if count < 0:
                return i
            f = _wanted(buf, klo, khi, keys, key_off, n_feat)
            if f == -2:  # a key decode_example reads as UTF-8 and that is not ASCII: left to it
                return i
            if f < 0:
                continue
            if spans[i, f, 0] >= 0 or kinds[f] != tag:  # repeated (the last would count), or another type
                return i
            spans[i, f, 0], spans[i, f, 1], spans[i, f, 2] = vlo, vhi, count
            found += 1
        if found != n_feat:
            return i
    return -1


@numba.njit(cache=True)
def fill_varints(buf, spans, width):
    """([N, width] uint64 of the varints of spans[i] = (start, end, values) for each example i, ok). Not ok
    where a varint is longer than 10 bytes or exceeds 64 bits (decode_example reads such bytes otherwise)."""
    out = np.empty((spans.shape[0], width), dtype=np.uint64)
    for i in range(spans.shape[0]):
        pos, end = spans[i, 0], spans[i, 1]
        if end - pos == width:  # every value < 128 (masks, segment ids, positions...): one byte each
            for j in range(width):
                out[i, j] = buf[pos + j]
            continue
        for j in range(width):  # `locate` counted `width` varints ending by `end`: the reads stay inside
            b = buf[pos]
            pos += 1
            v = np.uint64(b & 0x7F)
            shift = 7
            while b >= 0x80:
                if shift > 63:
                    return out, False
                b = buf[pos]
                pos += 1
                v |= np.uint64(b & 0x7F) << np.uint64(shift)
                shift += 7
            if shift == 70 and b > 1:
                return out, False
            out[i, j] = v
    return out, True


@numba.njit(cache=True)
def fill_bytes(buf, spans, nbytes):
    """[N, nbytes] uint8: the bytes of spans[i] = (start, end, values) for each example i."""
    out = np.empty((spans.shape[0], nbytes), dtype=np.uint8)
    for i in range(spans.shape[0]):
        pos = spans[i, 0]
        for j in range(nbytes):
            out[i, j] = buf[pos + j]
    return out
