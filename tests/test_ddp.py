"""Data-parallel pretraining: two Gloo processes under torchrun on a tiny model, the same code path as one.

Equivalence: 2 ranks x 1 micro-batch compute what 1 process x 2 accumulated micro-batches computes. The
micro-batches are the same examples with the same shapes, so each forward and backward is the same float
computation; what differs is how the two gradients meet: the ranks all-reduce (a sum, then DDP's division by
2, exact in binary) where one process adds the second into .grad, and the logged means are summed in another
order. With two addends a sum is the same either way, so the runs agree bit for bit here; the tolerances
(losses rtol 1e-6, weights atol 1e-6 after 40 LAMB steps) leave room for float32 round-off only, three orders
of magnitude below what normalising the MLM loss per rank instead of per global batch did (|dloss| 2.8e-3,
|dweight| 6e-2 over 40 steps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from albert_exp import checkpoint
from tests.conftest import ROOT, free_port
from tests.test_pretrain import make_shards, tiny_config
from tests.test_pretraining_data import tok_dir  # noqa: F401 (a fixture)


def _torchrun(cfg: dict, tmp: Path, name: str, nproc: int = 2) -> subprocess.Popen:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--max-restarts=0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*cmd, "-m", "albert_exp", "pretrain", "--config", str(path)],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the kill below reaches torchrun and both ranks
    )


def _single(cfg: dict, tmp: Path, name: str) -> None:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "albert_exp", "pretrain", "--config", str(path)], cwd=tmp, env=env, capture_output=True
    )
    assert out.returncode == 0, out.stdout.decode()[-3000:] + out.stderr.decode()[-3000:]


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _cfg(tmp: Path, name: str, **pretrain) -> dict:
    base = tiny_config(tmp, **{"num_train_steps": 12, "num_workers": 2, "save_checkpoints_steps": 4, **pretrain})
    return {**base, "pretrain": {**base["pretrain"], "output_dir": str(tmp / name)}}


def _weights(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    res = json.loads((out / "results.json").read_text())
    return load_file(str(Path(res["last_checkpoint"]) / "model.safetensors"))


METRICS = ("train/loss", "train/mlm_loss", "train/sop_loss", "train/mlm_accuracy", "train/sop_accuracy", "eval/loss")


def test_two_ranks_compute_what_one_process_with_accumulation_computes(tmp_path, mlflow_store):
    """Global batch 16 = 2 ranks x 8 = 1 process x 2 accumulated micro-batches of 8, 40 steps, on ragged mask
    weights (1..PRED predictions per example, so the ranks' micro-batches hold different numbers of masked
    positions and a per-rank normalisation of the MLM loss would differ from the global one). Same losses at
    every step and the same final weights; one MLflow run, every step logged once, by rank 0 alone."""
    import mlflow

    make_shards(tmp_path / "data", ragged=True)
    steps = dict(num_train_steps=40, save_checkpoints_steps=20, eval_every_steps=20, batch_size=16)
    _single(_cfg(tmp_path, "one", gradient_accumulation_steps=2, **steps), tmp_path, "one")
    proc = _torchrun(_cfg(tmp_path, "two", **steps), tmp_path, "two")
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, log[-4000:]
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    dloss = {}
    for key in METRICS:
        a = [(r["step"], r[key]) for r in one if key in r]
        b = [(r["step"], r[key]) for r in two if key in r]
        assert [s for s, _ in a] == [s for s, _ in b], key
        dloss[key] = float(np.max(np.abs(np.subtract([v for _, v in b], [v for _, v in a]))))
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert wa.keys() == wb.keys()
    dweight = max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa)
    print(f"max |dloss| {max(dloss.values()):.3g} ({max(dloss, key=dloss.get)}), max |dweight| {dweight:.3g}")
    for key in METRICS:
        a = [r[key] for r in one if key in r]
        np.testing.assert_allclose([r[key] for r in two if key in r], a, rtol=1e-6, atol=1e-7, err_msg=key)
    assert dweight <= 1e-6, f"weights differ by up to {dweight:.3g}"
    # One MLflow run, every step once, from rank 0; one results.json; the world size recorded.
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'pretrain'")
    assert len(runs) == 2  # "one" and "two"
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    client = mlflow.MlflowClient()
    history = [m.step for m in client.get_metric_history(res["mlflow_run_id"], "train/loss")]
    assert sorted(history) == list(range(1, 41))
    assert client.get_run(res["mlflow_run_id"]).data.params["derived.world_size"] == "2"
    assert log.count("pretrain: linear") == 1  # rank 0 alone prints


def test_batch_and_streams_must_split_over_ranks_and_a_resume_keeps_the_world_size():
    from albert_exp.config import load_config
    from albert_exp.errors import UserError
    from albert_exp.pretrain.ddp import Dist

    two = Dist(rank=0, world=2)
    pc = load_config(None, ["pretrain.batch_size=6", "pretrain.gradient_accumulation_steps=2"]).pretrain
    with pytest.raises(UserError, match=r"batch_size 6 is not divisible by world size 2 x gradient_accumulation"):
        two.check(pc, None, "cfg.yaml")
    pc = load_config(None, ["pretrain.batch_size=8", "pretrain.gradient_accumulation_steps=2"]).pretrain
    two.check(pc, None, "cfg.yaml")  # dynamic data: any worker count
    two.check(pc, 4, "cfg.yaml")
    with pytest.raises(UserError, match=r"num_workers=3 streams, which 2 ranks cannot share"):
        two.check(pc, 3, "cfg.yaml")
    two.check_resume({"world_size": 2}, "ckpt")
    with pytest.raises(UserError, match=r"written by 1 process\(es\), this run has 2"):
        two.check_resume({}, "ckpt")  # checkpoints from before DDP: one process


@pytest.mark.slow  # the same errors as a user meets them: two torchrun launches
def test_world_size_must_divide_the_batch_and_match_the_checkpoint(tmp_path, mlflow_store):
    bad = _cfg(tmp_path, "bad", batch_size=6, gradient_accumulation_steps=2)  # 2 ranks x 2 do not divide 6
    proc = _torchrun(bad, tmp_path, "bad")
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode != 0 and "batch_size 6 is not divisible by world size 2" in log, log[-3000:]
    # A checkpoint of one process, resumed by two: refused, naming both counts.
    cfg = _cfg(tmp_path, "resume", max_steps=4)
    _single(cfg, tmp_path, "resume")
    further = {**cfg, "pretrain": {**cfg["pretrain"], "max_steps": 8}}  # continues it (4 steps are reused as done)
    proc = _torchrun(further, tmp_path, "resume")
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode != 0 and "written by 1 process(es), this run has 2" in log, log[-3000:]


@pytest.mark.slow  # three torchrun launches of two ranks each: ~2 min on 2 cores
def test_killed_ddp_job_resumes_exactly(tmp_path, mlflow_store):
    straight = _torchrun(_cfg(tmp_path, "straight"), tmp_path, "straight")
    assert straight.wait(timeout=600) == 0, straight.stdout.read().decode()[-3000:]
    proc = _torchrun(_cfg(tmp_path, "killed"), tmp_path, "killed")
    deadline = time.time() + 300
    while not list(tmp_path.glob("killed@*.partial/checkpoints/step-00000004")):
        assert proc.poll() is None and time.time() < deadline, "finished or stuck before the kill"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (work,) = tmp_path.glob("killed@*.partial")
    done = checkpoint.latest(work)
    assert done is not None and int(done.name.split("-")[1]) < 12
    again = _torchrun(_cfg(tmp_path, "killed"), tmp_path, "killed")
    log = again.communicate(timeout=600)[0].decode()
    assert again.returncode == 0, log[-3000:]
    a, b = _rows(tmp_path / "straight"), _rows(tmp_path / "killed")
    for key in ("train/loss", "eval/loss"):
        sa = [(r["step"], r[key]) for r in a if key in r]
        sb = [(r["step"], r[key]) for r in b if key in r]
        assert [s for s, _ in sa] == [s for s, _ in sb], key
        np.testing.assert_allclose([v for _, v in sb], [v for _, v in sa], rtol=1e-6, err_msg=key)


@pytest.mark.slow  # builds a vocabulary and dynamic data first: ~1.5 min on 2 cores
def test_two_ranks_on_dynamic_data_follow_the_one_process_trajectory(tmp_path, tok_dir, mlflow_store):  # noqa: F811
    """The same with pretraining_data.mode: dynamic (shared by index; 2 loader workers per rank vs 0)."""
    from tests.test_dynamic import make_dynamic
    from tests.test_pretraining_data import _corpus, _toy_docs

    corpus = _corpus(tmp_path / "corpus", _toy_docs(200), lines_per_shard=500)
    manifest = make_dynamic(tmp_path / "d", corpus, tok_dir)["manifest"]

    def cfg(name: str, **pretrain) -> dict:
        base = tiny_config(tmp_path, num_train_steps=8, save_checkpoints_steps=4, eval_input=[], **pretrain)
        model = {**base["model"], "vocab_size": 400, "max_position_embeddings": 64}
        p = {**base["pretrain"], "input": [manifest], "max_seq_length": 64, "max_predictions_per_seq": 10}
        return {**base, "model": model, "pretrain": {**p, "output_dir": str(tmp_path / name)}}

    _single(cfg("one", gradient_accumulation_steps=2, num_workers=0), tmp_path, "one")
    proc = _torchrun(cfg("two", num_workers=2), tmp_path, "two")
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, log[-4000:]
    a = [(r["step"], r["train/loss"], r["data/epoch"]) for r in _rows(tmp_path / "one") if "train/loss" in r]
    b = [(r["step"], r["train/loss"], r["data/epoch"]) for r in _rows(tmp_path / "two") if "train/loss" in r]
    assert [(s, e) for s, _, e in a] == [(s, e) for s, _, e in b] and len(a) == 8
    np.testing.assert_allclose([v for _, v, _ in b], [v for _, v, _ in a], rtol=1e-5)
