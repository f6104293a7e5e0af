"""pretraining-data stage: google's features, the statistics the issue asks for, determinism whatever the
worker count (and on a real Ray head), resume per shard, SOP balance on short documents."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from albert_exp.config import PretrainConfig, PretrainingDataConfig, load_config
from albert_exp.corpus_files import ShardWriter
from albert_exp.pretraining_data.instances import is_word_start
from albert_exp.tfrecord import FEATURES, decode_example, iter_records
from tests.conftest import free_port, stage_runner

run = stage_runner("pretraining-data")

SEQ, PRED = 64, 10


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    from albert_exp import toy
    from albert_exp.vocab import build_hf_tokenizer, normalize, train_sentencepiece

    root = tmp_path_factory.mktemp("vocab")
    lines = [normalize(s, lowercase=True, keep_accents=False) for d in toy.pretraining_documents(0, 600) for s in d]
    train_sentencepiece(lines, root / "spiece", 400, "unigram", 1.0)
    build_hf_tokenizer(root / "spiece.model", root / "tokenizer", lowercase=True, keep_accents=False)
    return root / "tokenizer"


def _corpus(out: Path, docs: list[list[str]], lines_per_shard: int) -> Path:
    writer = ShardWriter(out, lines_per_shard)
    for d in docs:
        writer.add(d)
    writer.finish({"source": "test"})
    return out / "manifest.json"


def _toy_docs(n: int, seed: int = 1) -> list[list[str]]:
    from albert_exp import toy

    return list(toy.pretraining_documents(seed, n))


def _cfg(tmp: Path, manifest: Path, tok: Path, *extra: str):
    return load_config(
        None,
        [
            f"workdir={tmp / 'w'}",
            f"pretraining_data.input={manifest}",
            f"pretraining_data.tokenizer_dir={tok}",
            "pretraining_data.workers=1",
            f"pretrain.max_seq_length={SEQ}",
            f"pretrain.max_predictions_per_seq={PRED}",
            *extra,
        ],
    )


def _make(tmp: Path, manifest: Path, tok: Path, *extra: str) -> dict:
    """The stage without MLflow (build_tasks + execute + summarize): what run() does minus the tracking."""
    from albert_exp.pretraining_data import build_tasks, execute, summarize

    cfg = _cfg(tmp, manifest, tok, *extra)
    c = cfg.pretraining_data
    tasks, out, info = build_tasks(cfg)
    entries = execute(tasks, c.executor, c.workers, c.address, info["lines"])
    return {
        "files": [str(out / e["path"]) for e in entries],
        "totals": summarize(entries),
        "shards": len(entries),
        "shards_skipped": sum(e["skipped"] for e in entries),
    }


def _records(files: list[str]) -> list[dict[str, np.ndarray]]:
    return [decode_example(p) for f in files for _, p in iter_records(f)]


def _params(**settings) -> PretrainingDataConfig:
    """Instance-making settings as the stage resolves them (lengths left empty: pretrain's defaults)."""
    return PretrainingDataConfig(**settings).resolved(PretrainConfig())


def _sha(files: list[str]) -> list[str]:
    return [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]


def test_word_starts_for_scripts_without_spaces_and_continuations():
    assert is_word_start("▁hello") and is_word_start(",") and is_word_start("[CLS]", special=True)
    assert not is_word_start("llo") and not is_word_start("ет") and not is_word_start("é")  # continuations
    assert is_word_start("中") and is_word_start("国人") and is_word_start("ไทย") and is_word_start("カ")


def test_output_has_googles_features_and_the_asked_statistics(tmp_path, tok_dir, mlflow_store):
    manifest = _corpus(tmp_path / "corpus", _toy_docs(500), lines_per_shard=1200)
    res = run(_cfg(tmp_path, manifest, tok_dir, "pretraining_data.dupe_factor=8"))
    assert res["shards"] >= 2 and res["records"] > 3000
    recs = _records(res["files"])
    assert len(recs) == res["records"]
    out_manifest = json.loads(Path(res["manifest"]).read_text())
    t = out_manifest["totals"]

    lengths = {"seq": SEQ, "pred": PRED, 1: 1}
    masked = keep = mask_tok = 0
    mask_id = 4  # [MASK] in ALBERT's vocabulary layout
    for r in recs[:3000]:
        for name, (_, length) in FEATURES.items():
            assert r[name].shape == (lengths[length],)
        n_tok = int(r["input_mask"].sum())
        assert r["input_mask"][:n_tok].all() and not r["input_mask"][n_tok:].any()
        assert r["input_ids"][0] == 2 and (r["input_ids"][:n_tok] == 3).sum() == 2  # [CLS] ... [SEP] ... [SEP]
        k = int(r["masked_lm_weights"].sum())
        pos, ids = r["masked_lm_positions"][:k], r["masked_lm_ids"][:k]
        assert (np.diff(pos) > 0).all() and (pos > 0).all() and (pos < n_tok).all()
        assert not r["masked_lm_positions"][k:].any()
        seen = r["input_ids"][pos]
        masked += k
        mask_tok += int((seen == mask_id).sum())
        keep += int((seen == ids).sum())
        # Whole words: a masked continuation piece has its predecessor masked too.
        is_masked = np.zeros(SEQ, bool)
        is_masked[pos] = True
        after_special = np.r_[True, np.isin(r["input_ids"][:-1], (2, 3))]  # a segment may start mid-word (truncation)
        cont = is_masked & (r["token_boundary"] == 0) & ~after_special
        assert is_masked[np.flatnonzero(cont) - 1].all()
    # 80/10/10 (a random replacement equal to the original counts as kept: ~1/400 of 10%).
    assert abs(mask_tok / masked - 0.8) < 0.01 and abs(keep / masked - 0.1) < 0.01
    assert abs(t["mask_share"] - 0.8) < 0.01 and abs(t["random_share"] - 0.1) < 0.01
    # Masked share within 1% of masked_lm_prob as capped by max_predictions_per_seq.
    share = sum(float(r["masked_lm_weights"].sum()) for r in recs) / sum(int(r["input_mask"].sum()) for r in recs)
    assert abs(share - t["target_masked_share"]) < 0.01 and abs(share - t["masked_share"]) < 1e-9
    assert t["target_masked_share"] <= 0.15 + 0.01
    h = t["ngram_hist"]
    assert h[0] > h[1] > h[2] > 0
    assert abs(t["sop_swapped_share"] - 0.5) < 0.02
    assert 0.05 < t["short_target_share"] < 0.3
    assert {s["path"] for s in out_manifest["shards"]} == {Path(f).name for f in res["files"]}


def _short_documents() -> list[list[str]]:
    rng = random.Random(0)
    sentences = [s for d in _toy_docs(400, seed=5) for s in d]
    docs = []
    while sentences:  # 60% one-sentence, 40% two-sentence documents
        k = 1 if rng.random() < 0.6 else 2
        docs.append(sentences[:k])
        sentences = sentences[k:]
    return docs


def test_sop_balanced_on_short_documents(tmp_path, tok_dir):
    manifest = _corpus(tmp_path / "corpus", _short_documents(), lines_per_shard=100_000)
    res = _make(tmp_path, manifest, tok_dir, "pretraining_data.dupe_factor=20")
    labels = np.array([int(r["next_sentence_labels"][0]) for r in _records(res["files"])])
    assert labels.size > 2000
    assert abs(labels.mean() - 0.5) < 0.02, labels.mean()
    t = res["totals"]
    assert t["packed_documents"] > 0 and t["single_segment_split"] < 0.2 * t["instances"]  # split: > 0.3


def test_pairing_modes_fill_instances_and_keep_sop_balanced(tok_dir):
    """pack (the default) fills instances at least as well as google's random-document B, keeps labels
    balanced like split, and leaves fewer tiny segments than split; google's labels lean to 1."""
    from albert_exp.pretraining_data.instances import make_instances
    from albert_exp.pretraining_data.shards import Tokenizer, block_arrays

    tok = Tokenizer(tok_dir, lowercase=True, keep_accents=False)
    arrays = block_arrays(_short_documents(), tok)
    got = {}
    for mode in ("pack", "split", "google"):
        p = _params(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=10, pairing=mode)
        feats = [f for f, _ in make_instances(*arrays, tok.vocab, p, np.random.default_rng(3))]
        mask = np.concatenate([f["input_mask"] for f in feats])
        seg = np.concatenate([f["segment_ids"] for f in feats])
        real, lb = mask.sum(1), seg.sum(1) - 1
        got[mode] = {
            "tokens": real.mean(),
            "label1": np.concatenate([f["next_sentence_labels"] for f in feats]).mean(),
            "tiny": np.mean(np.minimum(real - lb - 3, lb) <= 2),
        }
    assert got["pack"]["tokens"] >= got["google"]["tokens"] > got["split"]["tokens"], got
    assert abs(got["pack"]["label1"] - 0.5) < 0.03 and abs(got["split"]["label1"] - 0.5) < 0.03, got
    assert got["google"]["label1"] > 0.6, got
    assert got["pack"]["tiny"] < got["split"]["tiny"], got


def test_deterministic_whatever_the_workers_and_resumable(tmp_path, tok_dir):
    manifest = _corpus(tmp_path / "corpus", _toy_docs(240), lines_per_shard=400)
    a = _make(tmp_path / "a", manifest, tok_dir, "pretraining_data.dupe_factor=3")
    b = _make(tmp_path / "b", manifest, tok_dir, "pretraining_data.dupe_factor=3", "pretraining_data.workers=2")
    assert a["shards"] >= 3 and _sha(a["files"]) == _sha(b["files"])
    again = _make(tmp_path / "a", manifest, tok_dir, "pretraining_data.dupe_factor=3")
    assert again["shards_skipped"] == a["shards"]
    # A killed run leaves a truncated shard: only that one is redone, with the same bytes.
    victim = Path(a["files"][1])
    victim.write_bytes(victim.read_bytes()[:1000])
    redo = _make(tmp_path / "a", manifest, tok_dir, "pretraining_data.dupe_factor=3")
    assert redo["shards_skipped"] == a["shards"] - 1 and _sha(redo["files"]) == _sha(b["files"])
    # Another seed: other bytes.
    c = _make(tmp_path / "c", manifest, tok_dir, "pretraining_data.dupe_factor=3", "seed=7")
    assert _sha(c["files"]) != _sha(a["files"])


def test_compressed_output_reads_back_the_same(tmp_path, tok_dir):
    manifest = _corpus(tmp_path / "corpus", _toy_docs(60), lines_per_shard=10_000)
    plain = _make(tmp_path / "p", manifest, tok_dir, "pretraining_data.dupe_factor=2")
    gz = _make(tmp_path / "g", manifest, tok_dir, "pretraining_data.dupe_factor=2", "pretraining_data.compress=true")
    assert gz["files"][0].endswith(".tfrecord.gz")
    assert gz["totals"]["bytes"] < plain["totals"]["bytes"] / 2
    assert [p for _, p in iter_records(gz["files"][0])] == [p for _, p in iter_records(plain["files"][0])]


@pytest.mark.slow  # TF's import alone takes ~15 s; test_tfrecord.py checks TF parses encode_batch output
def test_tensorflow_parses_the_stage_output(tmp_path, tok_dir):
    tf = pytest.importorskip("tensorflow")
    manifest = _corpus(tmp_path / "corpus", _toy_docs(30), lines_per_shard=10_000)
    res = _make(tmp_path, manifest, tok_dir, "pretraining_data.dupe_factor=2")
    spec = {
        k: tf.io.FixedLenFeature([{"seq": SEQ, "pred": PRED, 1: 1}[n]], tf.float32 if kind == "float" else tf.int64)
        for k, (kind, n) in FEATURES.items()
    }
    ours = _records(res["files"])
    for i, raw in enumerate(tf.data.TFRecordDataset(res["files"])):
        parsed = tf.io.parse_single_example(raw, spec)
        for k in spec:
            np.testing.assert_array_equal(parsed[k].numpy(), ours[i][k])


def test_written_records_equal_the_features_whatever_the_batch(tok_dir):
    """The stage's fused kernel (assemble, mask, serialize in one pass) writes exactly encode_batch of the
    feature arrays, and neither depends on the batch size (each instance has its own random stream)."""
    from dataclasses import asdict

    from albert_exp.pretraining_data.instances import RecordBuffer, make_instances, make_records
    from albert_exp.pretraining_data.shards import Tokenizer, block_arrays
    from albert_exp.tfrecord import encode_batch

    tok = Tokenizer(tok_dir, lowercase=True, keep_accents=False)
    arrays = block_arrays(_toy_docs(80), tok)
    p = _params(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=3)

    def stats_of(batches) -> dict:
        total = None
        for s in batches:
            total = s if total is None else (total.add(s) or total)
        return asdict(total)

    feats = list(make_instances(*arrays, tok.vocab, p, np.random.default_rng(7), batch=4096))
    small = list(make_instances(*arrays, tok.vocab, p, np.random.default_rng(7), batch=37))
    for name in FEATURES:
        whole = np.concatenate([f[name] for f, _ in feats])
        np.testing.assert_array_equal(whole, np.concatenate([f[name] for f, _ in small]))
    expected = b"".join(encode_batch(f, framed=True)[0].tobytes() for f, _ in feats)
    out = RecordBuffer(p, batch=50)
    recs = [(bytes(b), c, s) for b, c, s in make_records(*arrays, tok.vocab, p, np.random.default_rng(7), out)]
    assert len(recs) > 2 and b"".join(b for b, _, _ in recs) == expected  # a view per step, copied at once
    assert sum(c for _, c, _ in recs) == sum(len(f["input_ids"]) for f, _ in feats)
    assert stats_of(s for _, _, s in recs) == stats_of(s for _, s in feats) == stats_of(s for _, s in small)


def test_instances_draw_from_streams_that_do_not_overlap():
    from albert_exp.pretraining_data.masking import _next, _row_state

    seed, draws = np.uint64(12345), []
    for r in range(300):  # neighbouring instances of a block, 40 draws each (more than one masking uses)
        state = np.uint64(_row_state(seed, r))
        for _ in range(40):
            state, z = _next(state)
            state = np.uint64(state)  # numba hands uint64 back as a Python int
            draws.append(int(z))
    assert len(set(draws)) == len(draws)


def test_lines_without_tokens_are_dropped_and_an_empty_block_gives_nothing(tok_dir):
    from albert_exp.pretraining_data.instances import make_instances
    from albert_exp.pretraining_data.shards import Tokenizer, block_instances

    tok = Tokenizer(tok_dir, lowercase=True, keep_accents=False)
    rng = np.random.default_rng(0)
    empty = np.zeros(0, dtype=np.int64)
    none = np.zeros(1, np.int64)
    assert list(make_instances(empty, none, none, tok.vocab, _params(), rng)) == []
    assert list(block_instances([["\u0301\u0301"]], tok, _params(), rng)) == []  # only marks: no tokens
    out = list(block_instances([["\u0301"], ["the soup was good .", "we came back ."]], tok, _params(), rng))
    assert sum(s.instances for _, s in out) > 0
    # Only one-token, one-sentence documents: every chunk is dropped, and the statistics still say so.
    from albert_exp.pretraining_data.instances import RecordBuffer, make_records
    from albert_exp.pretraining_data.shards import block_arrays

    p = _params(dupe_factor=2, pairing="split")  # pack would pack the three into one document
    arrays = block_arrays([["the"], ["the"], ["the"]], tok)
    assert arrays[0].size == 3  # one token each
    ((feats, stats),) = list(make_instances(*arrays, tok.vocab, p, np.random.default_rng(0)))
    assert feats["input_ids"].shape == (0, p.max_seq_length) and stats.instances == 0 and stats.dropped_one_token == 6
    ((data, count, rstats),) = list(make_records(*arrays, tok.vocab, p, np.random.default_rng(0), RecordBuffer(p)))
    assert len(data) == count == 0 and rstats.dropped_one_token == 6


def test_missing_inputs_are_user_errors(tmp_path, tok_dir):
    from albert_exp.errors import UserError

    with pytest.raises(UserError, match="corpus manifest not found"):
        run(_cfg(tmp_path, tmp_path / "nope.json", tok_dir))
    manifest = _corpus(tmp_path / "corpus", _toy_docs(5), lines_per_shard=100)
    with pytest.raises(UserError, match="tokenizer directory not found"):
        run(_cfg(tmp_path, manifest, tmp_path / "no_tok"))


@pytest.mark.slow
def test_ray_executor_on_a_real_local_head_gives_the_same_bytes(tmp_path, tok_dir):
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    manifest = _corpus(tmp_path / "corpus", _toy_docs(120), lines_per_shard=300)
    local = _make(tmp_path / "local", manifest, tok_dir, "pretraining_data.dupe_factor=2")
    port = free_port()
    tmp_ray = Path("/tmp") / f"ray_pd_{port}"  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={tmp_ray}",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        remote = _make(
            tmp_path / "ray",
            manifest,
            tok_dir,
            "pretraining_data.dupe_factor=2",
            "pretraining_data.executor=ray",
            f"pretraining_data.address=127.0.0.1:{port}",
        )
    finally:
        head.terminate()  # `ray start --block` stops the processes it started when terminated
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(tmp_ray, ignore_errors=True)
    assert remote["shards"] == local["shards"] >= 2
    assert _sha(remote["files"]) == _sha(local["files"])
