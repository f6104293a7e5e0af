"""Data-parallel fine-tuning: two Gloo ranks under torchrun compute what one process with 2-fold accumulation
computes, through the same code path (albert_exp/finetune.py: Steps, token_loss, _step).

Global batch 16 = 2 ranks x 8 = 1 process x 2 micro-batches of 8, 200 training rows (13 steps an epoch,
the last of 8 rows: one part empty, so one rank runs an unlabelled row), 2 epochs, classifier dropout 0.1 on.
Each part is the same rows, padded alike and with the same dropout masks (seeded per part) on either side; the
loss is each part's summed token cross-entropy over the global batch's real tokens / world size (token_loss),
so DDP's gradient average and one process's accumulated sum are the same numbers, added in the same order
(two addends). Measured on the 2-core CPU: max |dloss| 0 and max |dweight| 0 (bit for bit); the tolerances
leave room for float32 round-off only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from tests.conftest import ROOT, free_port
from tests.test_tune import TINY, make_data

LOSSES = ("finetune/train_loss", "finetune/batch_loss", "val/loss", "val/token_accuracy")


def _config(tmp: Path, name: str, **finetune) -> Path:
    data = tmp / "data"
    sets = dict(x.split("=", 1) for x in TINY if x.startswith(("model.", "finetune.")))
    cfg: dict = {"name": "ddp", "workdir": str(tmp / name), "stages": ["finetune"], "model": {}, "finetune": {}}
    for k, v in sets.items():
        section, key = k.split(".")
        cfg[section][key] = yaml.safe_load(v)
    cfg["finetune"].update(
        epochs=2,
        learning_rate=0.003,
        tokenizer_dir=str(data / "vocab" / "tokenizer"),
        **{f"{s}_csv": str(data / "corpus" / f"{s}.csv") for s in ("train", "val", "test")},
        **finetune,
    )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(cmd: list[str], tmp: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    import mlflow

    client = mlflow.MlflowClient()
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in LOSSES}


def _weights(workdir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    (last,) = (workdir / "finetune" / "checkpoints").glob("step-00000002")
    return load_file(str(last / "model.safetensors"))


def test_two_ranks_compute_what_one_process_with_accumulation_computes(tmp_path, mlflow_store):
    import mlflow

    make_data(tmp_path / "data", rows=200)
    finetune = [sys.executable, "-m", "albert_exp", "finetune", "--config"]
    _run([*finetune, str(_config(tmp_path, "one", gradient_accumulation_steps=2))], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--max-restarts=0"]
    torchrun += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "albert_exp"]
    log = _run([*torchrun, "finetune", "--config", str(_config(tmp_path, "two"))], tmp_path)
    one, two = (json.loads((tmp_path / n / "finetune" / "results.json").read_text()) for n in ("one", "two"))
    a, b = _history(one["run_id"]), _history(two["run_id"])
    dloss = 0.0
    for key in LOSSES:
        assert [s for s, _ in a[key]] == [s for s, _ in b[key]] and a[key], key  # every point once, rank 0's
        va, vb = np.array([v for _, v in a[key]]), np.array([v for _, v in b[key]])
        dloss = max(dloss, float(np.max(np.abs(va - vb))))
        np.testing.assert_allclose(vb, va, rtol=1e-6, atol=1e-7, err_msg=key)
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    dweight = max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa)
    print(f"2 ranks vs 1 process x 2: max |dloss| {dloss:.3g}, max |dweight| {dweight:.3g}")
    assert wa.keys() == wb.keys() and dweight <= 1e-6, dweight
    assert one["test/token_accuracy"] == two["test/token_accuracy"]
    # one run per training, by rank 0 alone; the world size as a tag
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'finetune'")
    assert len(runs) == 2
    tags = mlflow.MlflowClient().get_run(two["run_id"]).data.tags
    assert tags["finetune.world_size"] == "2" and tags["finetune.ran_on"] == "cpu"
    assert log.count("epoch 2/2:") == 1  # rank 0 alone prints
