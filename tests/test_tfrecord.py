"""TFRecord I/O without TensorFlow: wire format, framing, corruption, and compatibility both ways with
google-research/albert (its fixture file parses here; our files parse with TF's own parser and google's
feature spec)."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from albert_exp.tfrecord import (
    FEATURES,
    CorruptRecordError,
    decode_batch,
    decode_example,
    encode_batch,
    encode_example,
    frame_records,
    iter_records,
    write_records,
)
from tests.conftest import require_reference

SEQ, PRED = 16, 4


def _batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = {"seq": SEQ, "pred": PRED, 1: 1}
    out = {}
    for name, (kind, length) in FEATURES.items():
        shape = (n, lengths[length])
        out[name] = (
            rng.integers(0, 2, shape).astype(np.float32)
            if kind == "float"
            else rng.integers(0, 30000 if "ids" in name else 2, shape)
        )
    return out


def _row(batch: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in batch.items()}


def test_encode_decode_round_trip_with_extreme_values():
    ex = {
        "input_ids": np.array([0, 1, 127, 128, 16383, 16384, 2**40, -1, -(2**63), 2**63 - 1]),
        "masked_lm_weights": np.array([0.0, 1.0, -2.5, 1e-30], dtype=np.float32),
        "empty": np.zeros(0, dtype=np.int64),
    }
    d = decode_example(encode_example(ex))
    assert d["input_ids"].dtype == np.int64 and d["masked_lm_weights"].dtype == np.float32
    np.testing.assert_array_equal(d["input_ids"], ex["input_ids"])
    np.testing.assert_array_equal(d["masked_lm_weights"], ex["masked_lm_weights"])
    assert d["empty"].size == 0


def test_batch_encoding_is_byte_identical_to_single_examples():
    batch = _batch(50)
    batch["input_ids"][3, 0] = 2**35  # a 6-byte varint in one row only
    batch["input_ids"][4, 1] = -7  # a 10-byte varint
    buf, offsets = encode_batch(batch)
    assert offsets[0] == 0 and offsets[-1] == buf.size
    for i in range(50):
        assert buf[offsets[i] : offsets[i + 1]].tobytes() == encode_example(_row(batch, i))


def test_compiled_crc_matches_the_crc32c_package():
    from albert_exp.tfrecord import masked_crc
    from albert_exp.tfrecord_encode import CRC_TABLES, masked_crc32c

    rng = np.random.default_rng(1)
    for size in (0, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 4099):  # around the 8-byte steps and their tail
        data = rng.integers(0, 256, size, dtype=np.uint8)
        assert masked_crc32c(data, CRC_TABLES) == masked_crc(data.tobytes()), size


def test_batch_encoding_of_odd_shapes():
    batch = {
        "input_ids": np.zeros((3, 0), dtype=np.int64),
        "masked_lm_weights": np.ones((3, 2)),
        "big": np.full((3, 1), 2**63 - 1),
        "next_sentence_labels": np.array([[0], [1], [-1]]),
    }
    buf, offsets = encode_batch(batch)
    assert [buf[offsets[i] : offsets[i + 1]].tobytes() for i in range(3)] == [
        encode_example(_row(batch, i)) for i in range(3)
    ]
    edges = [2**k + d for k in (7, 14, 21, 28, 35, 42, 49, 56, 63) for d in (-1, 0)]
    rows = {
        "v": np.array([[1, 2, 3, 4], [1, 200, 3, 4], [0, 0, 0, 127], [2**28, 5, 6, 7], [-1, -(2**63), 0, 1]]),
        "e": np.array(edges + [0, 1], dtype=np.uint64).view(np.int64).reshape(5, 4),
    }
    buf, offsets = encode_batch(rows, framed=True)  # rows all below 128 take the one-byte path, others not
    unframed, uoff = encode_batch(rows)
    for i in range(5):
        assert unframed[uoff[i] : uoff[i + 1]].tobytes() == encode_example(_row(rows, i))
        assert buf[offsets[i] + 12 : offsets[i + 1] - 4].tobytes() == encode_example(_row(rows, i))
    for width in range(95, 140):  # bodies of 127/128 bytes and around: the length varint grows a byte
        wide = {"x": np.arange(width)[None, :] % 2}
        assert encode_batch(wide)[0].tobytes() == encode_example(_row(wide, 0))
    empty, off = encode_batch({"input_ids": np.zeros((0, 4), dtype=np.int64)}, framed=True)
    assert empty.size == 0 and off.tolist() == [0]


def test_write_and_read_back_plain_and_gzip(tmp_path):
    batch = _batch(30)
    payloads = [encode_example(_row(batch, i)) for i in range(30)]
    plain = write_records(tmp_path / "a.tfrecord", payloads)
    assert plain["records"] == 30
    data = (tmp_path / "a.tfrecord").read_bytes()
    assert plain["bytes"] == len(data) and plain["sha256"] == hashlib.sha256(data).hexdigest()
    buf, offsets = encode_batch(batch)
    assert frame_records(buf, offsets) == data  # the batch framing writes the same bytes
    framed, rec_offsets = encode_batch(batch, framed=True)
    assert framed.tobytes() == data and rec_offsets[1] == 12 + len(payloads[0]) + 4
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed

    gz = write_records(tmp_path / "a.tfrecord.gz", payloads, compress=True)
    gz2 = write_records(tmp_path / "b.tfrecord.gz", payloads, compress=True)
    assert gz["sha256"] == gz2["sha256"]  # no time stamp or name in the GZIP header: reproducible bytes
    assert gzip.decompress((tmp_path / "a.tfrecord.gz").read_bytes()) == data
    for path in ("a.tfrecord", "a.tfrecord.gz"):
        got = list(iter_records(tmp_path / path))
        assert [p for _, p in got] == payloads
        assert got[1][0] == 12 + len(payloads[0]) + 4  # offsets in the (uncompressed) record stream
    # Resume from an offset.
    rest = list(iter_records(tmp_path / "a.tfrecord.gz", start_offset=got[10][0]))
    assert [p for _, p in rest] == payloads[10:]


def test_corrupt_records_are_named_or_counted(tmp_path):
    payloads = [encode_example(_row(_batch(5), i)) for i in range(5)]
    path = tmp_path / "c.tfrecord"
    write_records(path, payloads)
    good = path.read_bytes()
    offsets = [o for o, _ in iter_records(path)]

    bad_data = bytearray(good)
    bad_data[offsets[2] + 12 + 3] ^= 0xFF
    path.write_bytes(bytes(bad_data))
    with pytest.raises(CorruptRecordError, match=rf"c.tfrecord@{offsets[2]}: bad data CRC"):
        list(iter_records(path))
    it = iter_records(path, skip_corrupt=True)
    assert [p for _, p in it] == payloads[:2] + payloads[3:] and it.corrupt == 1
    assert len(list(iter_records(path, check_crc=False))) == 5

    bad_len = bytearray(good)
    bad_len[offsets[1] + 9] ^= 0x01  # the length's CRC: the length cannot be trusted, resync to record 2
    path.write_bytes(bytes(bad_len))
    with pytest.raises(CorruptRecordError, match="bad length CRC"):
        list(iter_records(path))
    it = iter_records(path, skip_corrupt=True)
    assert [o for o, _ in it] == [offsets[0]] + offsets[2:] and it.corrupt == 1

    path.write_bytes(good[:-7])
    with pytest.raises(CorruptRecordError, match=rf"@{offsets[4]}: truncated record"):
        list(iter_records(path))
    it = iter_records(path, skip_corrupt=True)
    assert len(list(it)) == 4 and it.corrupt == 1


def test_reads_googles_reference_file():
    ref = require_reference() / "restaurant_review_train"
    records = [decode_example(p) for _, p in iter_records(ref)]
    assert len(records) == 40
    seq, pred = len(records[0]["input_ids"]), len(records[0]["masked_lm_positions"])
    lengths = {"seq": seq, "pred": pred, 1: 1}
    for r in records:
        assert set(r) == set(FEATURES)
        for name, (kind, length) in FEATURES.items():
            assert r[name].shape == (lengths[length],), name
            assert r[name].dtype == (np.float32 if kind == "float" else np.int64)
        n_tokens = int(r["input_mask"].sum())
        assert set(np.unique(r["input_mask"])) <= {0, 1} and r["input_mask"][:n_tokens].all()
        n_masked = int(r["masked_lm_weights"].sum())
        assert (r["masked_lm_positions"][:n_masked] < n_tokens).all()
        assert r["next_sentence_labels"][0] in (0, 1)
    assert len({int(r["input_ids"][0]) for r in records}) == 1  # every instance starts with [CLS]


KINDS = {name: kind for name, (kind, _) in FEATURES.items() if name != "token_boundary"}  # what the loader reads


def _stacked(payloads: list[bytes], kinds: dict[str, str]) -> dict[str, np.ndarray] | None:
    """The reference of decode_batch: decode_example's arrays stacked, None where that fails."""
    try:
        rows = [decode_example(p) for p in payloads]
        return {
            n: np.stack([r[n] for r in rows]).astype(np.float32 if k == "float" else np.int64) for n, k in kinds.items()
        }
    except (ValueError, KeyError):
        return None


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert got[name].tobytes() == want[name].tobytes(), name


def test_compiled_batch_decoding_equals_decode_example_on_googles_file():
    ref = require_reference() / "restaurant_review_train"
    payloads = [p for _, p in iter_records(ref)]
    for lo, hi in ((0, 40), (0, 1), (3, 11), (39, 40)):
        got = decode_batch(payloads[lo:hi], KINDS)
        assert got is not None, "google's layout must take the compiled path"
        _same(got, _stacked(payloads[lo:hi], KINDS))


def _entry(key: bytes, feature: bytes) -> bytes:
    """A Features map entry, from its key and its serialized Feature."""
    from albert_exp.tfrecord import _TAG_1, _TAG_2, _varint

    body = bytes([_TAG_1]) + _varint(len(key)) + key + bytes([_TAG_2]) + _varint(len(feature)) + feature
    return bytes([_TAG_1]) + _varint(len(body)) + body


def _example(entries: bytes) -> bytes:
    from albert_exp.tfrecord import _TAG_1, _varint

    return bytes([_TAG_1]) + _varint(len(entries)) + entries


def _entries(example: bytes) -> bytes:
    """An Example's map entries (its Features message without tag and length)."""
    from albert_exp.tfrecord import _read_varint

    return example[_read_varint(example, 1)[1] :]


def test_compiled_batch_decoding_is_the_reference_or_declines():
    """decode_batch gives decode_example's arrays or None (then the loader decodes with decode_example):
    on our writer's records, extreme values and layouts the compiled reader does not take, and on thousands
    of random corruptions of them. Never other arrays, never an array where decode_example fails."""
    from albert_exp.tfrecord import _TAG_1, _TAG_FLOAT, _TAG_INT64, _varint

    base = _batch(8, seed=5)
    base["input_ids"][0, :4] = [2**35, -1, -(2**63), 2**63 - 1]  # 6- and 10-byte varints
    base["masked_lm_weights"][1, 0] = np.frombuffer(b"\x01\x00\xc0\x7f", "<f4")[0]  # a NaN with a payload
    good = [encode_example(_row(base, i)) for i in range(8)]
    _same(decode_batch(good, KINDS), _stacked(good, KINDS))
    unpacked = b"".join(bytes([1 << 3]) + _varint(v) for v in (1, 2))  # Int64List with one varint per value
    loose = _entry(b"input_ids", bytes([_TAG_INT64]) + _varint(len(unpacked)) + unpacked)
    wide = _entry(b"x", bytes([_TAG_INT64, 12, _TAG_1, 10]) + b"\xff" * 9 + b"\x01")  # a 10-byte varint: fine
    over = _entry(b"input_ids", bytes([_TAG_INT64, 13, _TAG_1, 11]) + b"\xff" * 10 + b"\x01")  # 11 bytes
    floats = bytes([_TAG_1]) + _varint(4 * SEQ) + bytes(4 * SEQ)
    no_ids = encode_example({k: v for k, v in _row(base, 0).items() if k != "input_ids"})
    swapped = _example(_entries(no_ids) + _entry(b"input_ids", bytes([_TAG_FLOAT]) + _varint(len(floats)) + floats))
    odd = [
        [_example(loose)],  # another layout: declined, decode_example reads it
        [_example(over)],  # a varint beyond 64 bits
        [good[0][:-1]],  # truncated
        [good[0] + b"\x00"],  # trailing bytes
        [good[1], encode_example({k: v for k, v in _row(base, 0).items() if k != "masked_lm_ids"})],  # missing
        [encode_example({**_row(base, 0), "input_ids": np.arange(SEQ + 1)}), good[1]],  # ragged rows
        [swapped],  # a float list where ints are wanted
        [_example(_entries(good[0]) + _entry(b"input_ids", b"\x1a\x00"))],  # repeated (and an empty list)
        [_example(_entries(good[0]) + _entry(b"\xff", b"\x1a\x00"))],  # a key that is not UTF-8
        [_example(_entries(good[0]) + _entry(b"x", bytes([_TAG_INT64, 4, _TAG_1, 2, 1, 0x81])))],  # truncated
        [_example(_entries(good[0]) + _entry(b"x", bytes([_TAG_FLOAT, 5, _TAG_1, 3, 0, 0, 0])))],  # 3 float bytes
    ]
    assert decode_batch([_example(_entries(good[2]) + wide)], KINDS) is not None
    for payloads in odd:
        got = decode_batch(payloads, KINDS)
        assert got is None, payloads
    rng = np.random.default_rng(0)
    taken = 0
    for _ in range(3000):
        batch = list(good[:3])
        i, p = int(rng.integers(0, 3)), bytearray(batch[int(rng.integers(0, 3))])
        for _ in range(int(rng.integers(1, 4))):
            what, at = int(rng.integers(0, 3)), int(rng.integers(0, len(p)))
            if what == 0:
                p[at] = int(rng.integers(0, 256))
            elif what == 1:
                del p[at]
            else:
                p.insert(at, int(rng.integers(0, 256)))
        batch[i] = bytes(p)
        got, want = decode_batch(batch, KINDS), _stacked(batch, KINDS)
        if got is not None:
            assert want is not None, batch[i]
            _same(got, want)
            taken += 1
    assert taken > 100  # some corruptions still parse (a changed value): those must be read alike


def test_tensorflow_parses_our_files_with_googles_feature_spec(tmp_path):
    tf = pytest.importorskip("tensorflow")
    batch = _batch(20, seed=3)
    buf, offsets = encode_batch(batch)
    payloads = [buf[offsets[i] : offsets[i + 1]].tobytes() for i in range(20)]
    write_records(tmp_path / "x.tfrecord", payloads)
    write_records(tmp_path / "x.tfrecord.gz", payloads, compress=True)
    # google-research/albert run_pretraining.py input_fn_builder (with and without masked_lm_budget).
    spec = {
        "input_ids": tf.io.FixedLenFeature([SEQ], tf.int64),
        "input_mask": tf.io.FixedLenFeature([SEQ], tf.int64),
        "segment_ids": tf.io.FixedLenFeature([SEQ], tf.int64),
        "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
        "token_boundary": tf.io.FixedLenFeature([SEQ], tf.int64),
        "masked_lm_positions": tf.io.FixedLenFeature([PRED], tf.int64),
        "masked_lm_ids": tf.io.FixedLenFeature([PRED], tf.int64),
        "masked_lm_weights": tf.io.FixedLenFeature([PRED], tf.float32),
    }
    for name, comp in (("x.tfrecord", None), ("x.tfrecord.gz", "GZIP")):
        ds = tf.data.TFRecordDataset(str(tmp_path / name), compression_type=comp)
        parsed = [tf.io.parse_single_example(r, spec) for r in ds]
        assert len(parsed) == 20
        for i, p in enumerate(parsed):
            for k in spec:
                np.testing.assert_array_equal(p[k].numpy(), batch[k][i])
    # And examples serialised by TF itself (with values our encoder never writes: negative, 64-bit, fractional
    # floats) decode here to exactly the values TF was given.
    rng = np.random.default_rng(5)
    for i in range(5):
        row = {k: v[i].copy() for k, v in batch.items()}
        row["input_ids"][:3] = [-1, 2**62 + 3, -(2**63)]
        row["masked_lm_weights"] = rng.normal(size=PRED).astype(np.float32)
        feature = {
            k: tf.train.Feature(float_list=tf.train.FloatList(value=v.tolist()))
            if FEATURES[k][0] == "float"
            else tf.train.Feature(int64_list=tf.train.Int64List(value=v.tolist()))
            for k, v in row.items()
        }
        theirs = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        ours = decode_example(theirs)
        assert ours.keys() == set(FEATURES)
        for k, v in row.items():
            np.testing.assert_array_equal(ours[k], v)
            assert ours[k].dtype == (np.float32 if FEATURES[k][0] == "float" else np.int64)
