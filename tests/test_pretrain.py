"""Pretraining: loader (determinism, resume positions, corruption, google's fixture), optimiser and schedule,
the loop (learns a toy task, logs, checkpoints), exact resume after SIGKILL, plateau stop. Tiny models only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from albert_exp import checkpoint
from albert_exp.config import load_config
from albert_exp.errors import UserError
from albert_exp.pretrain import data, optim
from albert_exp.tfrecord import (
    CorruptRecordError,
    decode_batch,
    decode_example,
    encode_example,
    iter_records,
    write_records,
)
from tests.conftest import ROOT, require_reference

SEQ, PRED, VOCAB = 16, 3, 40
CLS, SEP, MASK = 2, 3, 4


def toy_examples(n: int, seed: int, ragged: bool = False) -> list[bytes]:
    """Learnable data: segment A counts up from a random start, segment B continues it; SOP label 1 swaps them.
    Masked tokens are predictable from their neighbours. `ragged`: 1..PRED real predictions per example, the
    rest padded with weight 0 (as google's data has when a sequence has few maskable tokens)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = int(rng.integers(5, VOCAB - 14))
        a, b = list(range(start, start + 6)), list(range(start + 6, start + 13))
        swap = int(rng.integers(0, 2))
        if swap:
            a, b = b, a
        ids = [CLS, *a, SEP, *b, SEP]
        seg = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        ids, seg = ids + [0] * (SEQ - len(ids)), seg + [0] * (SEQ - len(seg))
        mask = [1] * 16
        positions = sorted(rng.choice([i for i in range(1, 16) if ids[i] not in (CLS, SEP)], PRED, replace=False))
        real = int(rng.integers(1, PRED + 1)) if ragged else PRED
        positions = [*positions[:real], *[0] * (PRED - real)]
        targets = [ids[p] if i < real else 0 for i, p in enumerate(positions)]
        for p in positions[:real]:
            ids[p] = MASK
        out.append(
            encode_example(
                {
                    "input_ids": ids,
                    "input_mask": mask,
                    "segment_ids": seg,
                    "token_boundary": [1] * SEQ,
                    "masked_lm_positions": positions,
                    "masked_lm_ids": targets,
                    "masked_lm_weights": np.array([1.0] * real + [0.0] * (PRED - real), np.float32),
                    "next_sentence_labels": [swap],
                }
            )
        )
    return out


def make_shards(root: Path, shards: int = 3, per_shard: int = 64, seed: int = 0, ragged: bool = False) -> list[str]:
    paths = []
    for i in range(shards):
        p = root / f"shard-{i:03d}.tfrecord"
        write_records(p, toy_examples(per_shard, seed * 100 + i, ragged))
        paths.append(str(p))
    return paths


TINY_MODEL = {
    "vocab_size": VOCAB,
    "embedding_size": 16,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": SEQ,
}


def tiny_config(tmp_path: Path, **pretrain) -> dict:
    inputs = (
        make_shards(tmp_path / "data")
        if not (tmp_path / "data").exists()
        else sorted(str(p) for p in (tmp_path / "data").glob("*.tfrecord"))
    )
    heldout = tmp_path / "heldout.tfrecord"
    if not heldout.exists():
        write_records(heldout, toy_examples(32, 999))
    return {
        "name": "pretrain-test",
        "seed": 7,
        "workdir": str(tmp_path / "work"),
        "model": TINY_MODEL,
        "pretrain": {
            "input": inputs,
            "eval_input": [str(heldout)],
            "max_seq_length": SEQ,
            "max_predictions_per_seq": PRED,
            "batch_size": 8,
            "num_train_steps": 40,
            "num_warmup_steps": 4,
            "learning_rate": 0.01,
            "save_checkpoints_steps": 10,
            "log_every_steps": 1,
            "eval_every_steps": 10,
            "eval_batches": 2,
            "num_workers": 0,
            "shuffle_block": 16,
            "log_checkpoints": False,
            # one thread: tiny matmuls on a shared 2-core machine are 30x slower with 2
            "torch_threads": 1,
            **pretrain,
        },
    }


def cfg_from(tmp_path: Path, d: dict):
    path = tmp_path / "cfg.yaml"
    path.write_text("# Command: test\n# Purpose: test\n# Expected: test\n" + yaml.safe_dump(d))
    return load_config(path), path


# ---------------------------------------------------------------------------------------------------------
# Loader


def _take(stream_or_loader, n):
    out = []
    for b in stream_or_loader:
        data.raise_if_error(b)
        out.append(b)
        if len(out) == n:
            return out


def test_stream_is_deterministic_covers_every_record_and_resumes_mid_block(tmp_path):
    files = make_shards(tmp_path, shards=3, per_shard=20)
    kw = dict(batch_size=4, max_seq_length=SEQ, seed=1, block=8)
    # Epoch 0: 3 files over 2 streams -> 2 files (10 batches) and 1 file (5 batches): every record once.
    seen = _take(data.Stream(files, 0, 2, **kw).batches(), 10) + _take(data.Stream(files, 1, 2, **kw).batches(), 5)
    rows = Counter(tuple(r.tolist()) for b in seen for r in b["input_ids"])
    everything = Counter(tuple(decode_example(p)["input_ids"].tolist()) for f in files for _, p in iter_records(f))
    assert rows == everything
    first = _take(data.Stream(files, 0, 2, **kw).batches(), 6)
    for b1, b2 in zip(first, _take(data.Stream(files, 0, 2, **kw).batches(), 6), strict=True):
        assert torch.equal(b1["input_ids"], b2["input_ids"])
    # resume from the position carried by batch 2 (mid-block): batches 3.. are identical
    pos = data.Position(**first[2]["meta"]["position"])
    assert pos.taken not in (0, 8)
    resumed = _take(data.Stream(files, 0, 2, position=pos, **kw).batches(), 3)
    for b1, b2 in zip(first[3:], resumed, strict=True):
        assert torch.equal(b1["input_ids"], b2["input_ids"])
    # another seed gives another order
    other = _take(data.Stream(files, 0, 2, **{**kw, "seed": 2}).batches(), 1)
    assert not torch.equal(other[0]["input_ids"], first[0]["input_ids"])


def test_loader_workers_round_robin_and_resume(tmp_path):
    files = make_shards(tmp_path, shards=2, per_shard=24)
    kw = dict(batch_size=4, max_seq_length=SEQ, seed=3, block=8, skip_corrupt=False)
    full = _take(data.make_loader(files, streams=2, positions=[None, None], batches_done=0, **kw), 9)
    assert [b["meta"]["stream"] for b in full] == [0, 1] * 4 + [0]
    positions = [None, None]
    for b in full[:5]:
        positions[b["meta"]["stream"]] = b["meta"]["position"]
    rest = _take(data.make_loader(files, streams=2, positions=positions, batches_done=5, **kw), 4)
    assert [b["meta"]["stream"] for b in rest] == [1, 0, 1, 0]
    for b1, b2 in zip(full[5:], rest, strict=True):
        assert torch.equal(b1["input_ids"], b2["input_ids"])


def test_corrupt_record_names_file_and_offset_or_is_skipped(tmp_path):
    path = tmp_path / "bad.tfrecord"
    write_records(path, toy_examples(10, 0))
    raw = bytearray(path.read_bytes())
    size = len(raw) // 10
    raw[3 * size + 20] ^= 0xFF  # flip a byte inside the 4th record's data
    path.write_bytes(bytes(raw))
    kw = dict(batch_size=4, max_seq_length=SEQ, seed=0, block=16)
    loader = data.make_loader([str(path)], streams=1, positions=[None], batches_done=0, skip_corrupt=False, **kw)
    with pytest.raises(CorruptRecordError, match=r"bad\.tfrecord@\d+"):
        _take(loader, 2)
    stream = data.Stream([str(path)], 0, 1, skip_corrupt=True, **kw)
    batches = _take(stream.batches(), 3)
    assert batches[-1]["meta"]["corrupt"] >= 1 and stream.corrupt >= 1


def test_wrong_sequence_length_is_a_user_error(tmp_path):
    files = make_shards(tmp_path, shards=1, per_shard=8)
    loader = data.make_loader(
        files,
        streams=1,
        positions=[None],
        batches_done=0,
        batch_size=4,
        max_seq_length=32,
        seed=0,
        block=8,
        skip_corrupt=False,
    )
    with pytest.raises(UserError, match="max_seq_length=16"):
        _take(loader, 1)


def test_reads_googles_reference_records():
    ref = require_reference()
    path = str(ref / "restaurant_review_train")
    stream = data.Stream([path], 0, 1, batch_size=8, max_seq_length=512, seed=0, block=64)
    batch = _take(stream.batches(), 1)[0]
    assert batch["input_ids"].shape == (8, 512) and batch["mlm_positions"].shape == (8, 20)
    assert set(batch["sop_labels"].tolist()) <= {0, 1}
    assert (batch["input_ids"] < 159).all() and batch["mlm_weights"].sum() > 0


def _same_tensors(got: dict, want: dict) -> None:
    assert set(got) - {"meta"} == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert got[k].numpy().tobytes() == v.numpy().tobytes(), k


def test_compiled_reader_gives_the_reference_readers_batches_on_googles_records():
    """The static loader decodes with tfrecord.decode_batch (compiled): byte for byte the tensors of
    decode_example + to_batch (the reader before it) on google's own records, over two epochs."""
    path = str(require_reference() / "restaurant_review_train")
    kw = dict(batch_size=8, max_seq_length=512, seed=0, block=16)
    records = data.Stream([path], 0, 1, **kw).records()  # the same payloads in the same order
    for batch in _take(data.Stream([path], 0, 1, **kw).batches(), 10):  # 80 of the file's 40 records
        _same_tensors(batch, data.to_batch([decode_example(next(records)) for _ in range(8)], 512, path))


def test_records_the_compiled_reader_declines_are_read_or_named_one_by_one():
    from albert_exp.tfrecord import _read_varint, _varint

    good = toy_examples(3, 0)
    entries = good[0][_read_varint(good[0], 1)[1] :]  # the Features message without tag and length
    entries += b"\x0a\x07\x0a\x01z\x12\x02\x0a\x00"  # one more feature: an empty bytes_list
    odd = b"\x0a" + _varint(len(entries)) + entries
    assert decode_batch([odd], data.KINDS) is None
    _same_tensors(
        data.payloads_to_batch([good[1], odd], SEQ, "x"),
        data.to_batch([decode_example(p) for p in [good[1], odd]], SEQ, "x"),
    )
    with pytest.raises(UserError, match=r"record 2 of the 2 read up to stream 0.*not a valid tf.train.Example"):
        data.payloads_to_batch([good[1], good[2][:-3]], SEQ, "x", "stream 0, Position(...)")


# ---------------------------------------------------------------------------------------------------------
# Optimiser, schedule, plateau


def test_schedule_matches_googles_warmup_and_linear_decay():
    assert optim.lr_factor(0, 25_000, 1_000_000) == 0.0
    assert optim.lr_factor(12_500, 25_000, 1_000_000) == 0.5
    assert optim.lr_factor(25_000, 25_000, 1_000_000) == pytest.approx(0.975)
    assert optim.lr_factor(1_000_000, 25_000, 1_000_000) == 0.0
    scaled = load_config().pretrain.scaled()
    assert (scaled.num_train_steps, scaled.num_warmup_steps, scaled.learning_rate) == (1_000_000, 25_000, 0.00022)


def test_lamb_groups_exclude_layernorm_and_bias():
    from transformers import AlbertConfig, AlbertForPreTraining

    model = AlbertForPreTraining(AlbertConfig(**TINY_MODEL))
    opt = optim.make_optimizer(model, 1e-3, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and not decay["adam"] and no_decay["weight_decay"] == 0 and no_decay["adam"]
    assert all(
        "bias" in names[id(p)] or "LayerNorm" in names[id(p)] or "layer_norm" in names[id(p)]
        for p in no_decay["params"]
    )
    assert any("query.weight" in names[id(p)] for p in decay["params"])
    assert type(opt).__module__.startswith("pytorch_optimizer")


def test_plateau_stops_on_flat_loss_only():
    p = optim.Plateau(window=20, min_improvement=0.01, smoothing=0.5)
    assert all(p.update(s, 5.0 - 0.05 * s) is None for s in range(1, 60))
    flat = optim.Plateau(window=20, min_improvement=0.01, smoothing=0.5)
    reasons = [flat.update(s, 2.0) for s in range(1, 30)]
    assert reasons[19] is None and reasons[20] is not None and "plateau" in reasons[20]


# ---------------------------------------------------------------------------------------------------------
# The loop


def test_pretrain_learns_logs_and_checkpoints(tmp_path, mlflow_store):
    from transformers import AlbertForTokenClassification

    from tests.conftest import stage_runner

    run = stage_runner("pretrain")

    cfg, _ = cfg_from(tmp_path, tiny_config(tmp_path, num_train_steps=60, keep_checkpoints=2, log_checkpoints=True))
    res = run(cfg)
    out = Path(res["output_dir"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    # LAMB moves each layer by ~lr * |w| per step: slow on a tiny model, but clearly downhill
    assert len(losses) == 60 and np.mean(losses[-10:]) < np.mean(losses[:5]) - 0.2
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert [d.name for d in checkpoint.checkpoint_dirs(out)][-2:] == ["step-00000050", "step-00000060"]
    assert len(checkpoint.checkpoint_dirs(out)) <= 3  # last 2 + best
    AlbertForTokenClassification.from_pretrained(res["model_dir"], num_labels=2)
    import mlflow

    client = mlflow.MlflowClient()
    hist = client.get_metric_history(res["mlflow_run_id"], "train/loss")
    assert sorted(m.step for m in hist) == list(range(1, 61))
    r = client.get_run(res["mlflow_run_id"])
    assert r.data.params["derived.learning_rate"] == "0.01" and "derived.rule" in r.data.params
    arts = [a.path for a in client.list_artifacts(res["mlflow_run_id"], "checkpoints")]
    assert "checkpoints/step-00000010" in arts
    assert (out / "results.json").is_file()


def test_plateau_stop_is_logged(tmp_path, mlflow_store):
    from tests.conftest import stage_runner

    run = stage_runner("pretrain")

    cfg, _ = cfg_from(
        tmp_path,
        tiny_config(
            tmp_path,
            num_train_steps=200,
            learning_rate=1e-9,
            plateau_window=10,
            plateau_min_improvement=0.05,
            eval_input=[],
        ),
    )
    res = run(cfg)
    assert res["stop_reason"].startswith("plateau") and res["step"] < 40
    assert Path(res["last_checkpoint"]).name == f"step-{res['step']:08d}"


def _cli(cfg_path: Path, *extra) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "albert_exp", "pretrain", "--config", str(cfg_path), *extra],
        cwd=cfg_path.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_losses_come_to_the_host_once_per_log_step_or_checkpoint(tmp_path, mlflow_store, monkeypatch):
    """Every step's losses stay on the device until a log step or a checkpoint (one copy, one all-reduce under
    DDP), where they reach the train/ means and the plateau check in step order: the logged means are those of
    a run that logs every step."""
    from tests.conftest import stage_runner

    run = stage_runner("pretrain")
    from albert_exp.pretrain.loop import Trainer

    syncs = []
    sync = Trainer._sync
    monkeypatch.setattr(Trainer, "_sync", lambda self: (syncs.append(len(self.unsynced)), sync(self))[1])

    def rows(name: str, **pretrain) -> list[dict]:
        cfg = tiny_config(tmp_path, num_train_steps=20, save_checkpoints_steps=7, eval_input=[], **pretrain)
        res = run(cfg_from(tmp_path, {**cfg, "pretrain": {**cfg["pretrain"], "output_dir": str(tmp_path / name)}})[0])
        return [json.loads(x) for x in (Path(res["output_dir"]) / "metrics.jsonl").read_text().splitlines()]

    every = rows("every", log_every_steps=1)
    assert syncs == [1] * 20
    syncs.clear()
    four = rows("four", log_every_steps=4)
    assert syncs == [4, 3, 1, 4, 2, 2, 4]  # steps 4, 7 (checkpoint), 8, 12, 14 (checkpoint), 16, 20
    assert [r["step"] for r in four] == [4, 8, 12, 16, 20]
    for r in four:
        for key in ("train/loss", "train/mlm_loss", "train/sop_accuracy"):
            window = [e[key] for e in every if r["step"] - 4 < e["step"] <= r["step"]]
            assert r[key] == pytest.approx(sum(window) / 4, rel=1e-12), (r["step"], key)


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, mlflow_store):
    """Kill -9 mid-run, run the same command again: same loss at every step, no step lost or logged twice."""
    import mlflow

    # log every 3 steps, checkpoint every 7: the kill comes mid-window, whose sums the checkpoint carries
    base = tiny_config(
        tmp_path, num_train_steps=60, num_workers=2, save_checkpoints_steps=7, eval_every_steps=5, log_every_steps=3
    )
    runs = {}
    for name in ("straight", "killed"):
        d = {**base, "pretrain": {**base["pretrain"], "output_dir": str(tmp_path / name)}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(d))
        runs[name] = path
    from tests.conftest import stage_runner

    run = stage_runner("pretrain")

    threads = torch.get_num_threads()
    try:  # the uninterrupted reference runs in-process (one subprocess start-up less)
        run(load_config(runs["straight"]))
    finally:
        torch.set_num_threads(threads)

    proc = _cli(runs["killed"])
    deadline = time.time() + 240
    while not list(tmp_path.glob("killed@*.partial/checkpoints/step-00000021")):
        assert proc.poll() is None and time.time() < deadline, "finished or stuck before the kill"
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    (work,) = tmp_path.glob("killed@*.partial")
    done = checkpoint.latest(work)
    assert done is not None and int(done.name.split("-")[1]) < 60
    assert not (tmp_path / "killed").exists()  # nothing complete yet: the link is made at the end
    out = _cli(runs["killed"])
    assert out.wait(timeout=300) == 0, out.stdout.read().decode()[-3000:]

    def trajectory(name):
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        res = json.loads((tmp_path / name / "results.json").read_text())
        return rows, res

    rows_a, res_a = trajectory("straight")
    rows_b, res_b = trajectory("killed")
    assert res_b["resumed_from"] and res_b["step"] == 60
    for key in ("train/loss", "train/mlm_loss", "train/sop_loss", "train/lr", "eval/loss"):
        a = [(r["step"], r[key]) for r in rows_a if key in r]
        b = [(r["step"], r[key]) for r in rows_b if key in r]
        assert [s for s, _ in a] == [s for s, _ in b], key  # no step lost or duplicated
        np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-6, atol=1e-7, err_msg=key)
    client = mlflow.MlflowClient()
    assert res_a["mlflow_run_id"] != res_b["mlflow_run_id"]
    steps = [m.step for m in client.get_metric_history(res_b["mlflow_run_id"], "train/loss")]
    assert sorted(steps) == list(range(3, 61, 3))  # the resumed run logged into the killed run's MLflow run
    exp = client.get_run(res_b["mlflow_run_id"]).info.experiment_id
    assert not client.search_runs([exp], "attributes.status = 'RUNNING'")  # the killed run ended with the rerun


def test_other_settings_train_apart_and_keep_the_earlier_output(tmp_path, mlflow_store):
    """Another identity (here: the worker count, which sets the data order) neither resumes nor overwrites the
    earlier output: it trains into its own directory and the link moves when it is complete."""
    from transformers import AlbertForPreTraining

    from tests.conftest import stage_runner

    run = stage_runner("pretrain")

    first = run(cfg_from(tmp_path, tiny_config(tmp_path, num_train_steps=10, eval_input=[]))[0])
    weights = (Path(first["model_dir"]) / "model.safetensors").read_bytes()
    second = run(cfg_from(tmp_path, tiny_config(tmp_path, num_train_steps=10, num_workers=2, eval_input=[]))[0])
    assert second["resumed_from"] is None and second["output_dir"] != first["output_dir"]
    assert second["mlflow_run_id"] != first["mlflow_run_id"]
    assert (tmp_path / "work" / "pretrain").resolve() == Path(second["output_dir"]).resolve()
    assert (Path(first["model_dir"]) / "model.safetensors").read_bytes() == weights
    AlbertForPreTraining.from_pretrained(first["model_dir"])


def _payloads(root: Path) -> list[bytes]:
    return [p for f in sorted(root.glob("*.tfrecord")) for _, p in iter_records(str(f))]


def _losses(res) -> list[float]:
    rows = [json.loads(x) for x in (Path(res["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def test_gradient_accumulation_equals_the_full_batch(tmp_path, mlflow_store):
    from tests.conftest import stage_runner

    run = stage_runner("pretrain")

    # Ragged mask weights (1..PRED real predictions per example): the micro-batches hold different numbers of
    # predictions, so normalising the MLM loss per micro-batch instead of over the whole batch would differ.
    make_shards(tmp_path / "data", ragged=True)
    weights = [decode_example(p)["masked_lm_weights"] for p in _payloads(tmp_path / "data")]
    assert len({float(w.sum()) for w in weights}) > 1

    full = run(
        cfg_from(tmp_path, tiny_config(tmp_path, num_train_steps=6, eval_input=[], output_dir=str(tmp_path / "full")))[
            0
        ]
    )
    accum = run(
        cfg_from(
            tmp_path,
            tiny_config(
                tmp_path,
                num_train_steps=6,
                eval_input=[],
                gradient_accumulation_steps=2,
                output_dir=str(tmp_path / "accum"),
            ),
        )[0]
    )
    np.testing.assert_allclose(_losses(accum), _losses(full), rtol=1e-5)


def test_init_from_hf_dir_and_tf_checkpoint_start_from_the_same_weights(tmp_path, mlflow_store):
    pytest.importorskip("tensorflow")
    from albert_exp.convert import hf
    from tests.conftest import stage_runner

    run = stage_runner("pretrain")

    torch.manual_seed(3)
    model = hf.build_model({**TINY_MODEL, "hidden_act": "gelu_new"})
    model.save_pretrained(str(tmp_path / "init_hf"))
    hf.hf_to_tf(tmp_path / "init_hf", tmp_path / "init_tf")
    results = {}
    for name in ("init_hf", "init_tf"):
        d = tiny_config(
            tmp_path,
            num_train_steps=2,
            eval_input=[],
            init_from=str(tmp_path / name),
            output_dir=str(tmp_path / f"out_{name}"),
        )
        results[name] = run(cfg_from(tmp_path, d)[0])
    assert results["init_hf"]["derived"]["derived.init"] == "hf"
    assert results["init_tf"]["derived"]["derived.init"] == "tf"
    np.testing.assert_allclose(_losses(results["init_tf"]), _losses(results["init_hf"]), rtol=1e-5)
    fresh = run(
        cfg_from(tmp_path, tiny_config(tmp_path, num_train_steps=2, eval_input=[], output_dir=str(tmp_path / "fresh")))[
            0
        ]
    )
    assert abs(_losses(fresh)[0] - _losses(results["init_hf"])[0]) > 1e-4


def test_cli_stops_on_a_corrupt_shard_or_skips_and_counts(tmp_path, mlflow_store, capsys):
    from albert_exp.cli import main as cli_main

    d = tiny_config(tmp_path, num_train_steps=30, eval_input=[], save_checkpoints_steps=30)  # > one epoch
    bad = Path(d["pretrain"]["input"][0])
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    _, path = cfg_from(tmp_path, d)
    assert cli_main(["pretrain", "--config", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{bad}@" in errors[0] and "CRC" in errors[0]
    assert (
        cli_main(
            ["pretrain", "--config", str(path), "--skip-corrupt", "--set", f"pretrain.output_dir={tmp_path / 'skip'}"]
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["data/corrupt_records"] >= 1


def test_bf16_autocast_runs_and_vocab_mismatch_is_a_user_error(tmp_path, mlflow_store):
    from tests.conftest import stage_runner

    run = stage_runner("pretrain")

    d = tiny_config(tmp_path, num_train_steps=3, eval_input=[], precision="bf16", output_dir=str(tmp_path / "bf"))
    res = run(cfg_from(tmp_path, d)[0])
    assert res["precision"] == "bf16" and all(np.isfinite(_losses(res)))
    d = tiny_config(tmp_path, num_train_steps=3, eval_input=[], output_dir=str(tmp_path / "small_vocab"))
    d["model"] = {**TINY_MODEL, "vocab_size": 20}
    with pytest.raises(UserError, match="vocab_size 20"):
        run(cfg_from(tmp_path, d)[0])
