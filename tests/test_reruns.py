"""Reruns as a user makes them, through the CLI: `main` twice, a changed fine-tuning or pretraining setting, a
failing corpus rerun, kills and reruns, `lineage` after each, and two processes starting on a fresh store."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

# Every stage of `main` at the smallest size that still runs each code path (about 30 s of CPU on one core).
TINY = """\
# Command: albert-exp main --config tiny.yaml
# Purpose: rerun scenarios (tests/test_reruns.py)
# Expected: under a minute on one core
name: reruns
seed: 1
workdir: runs
jobs: 1  # one stage at a time: a process per stage costs more than these stages take (tests/test_parallel.py: 2)
corpus: {toy: true, toy_documents: 150, toy_train_rows: 160, toy_val_rows: 48, toy_test_rows: 48}
vocab: {vocab_size: 300}
model: {embedding_size: 16, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64,
        max_position_embeddings: 64}
pretraining_data: {dupe_factor: 1, workers: 1}
pretrain: {max_seq_length: 64, max_predictions_per_seq: 10, batch_size: 16, num_train_steps: 6, num_warmup_steps: 1,
           learning_rate: 0.005, save_checkpoints_steps: 3, log_every_steps: 1, num_workers: 0, torch_threads: 1,
           log_checkpoints: false}
finetune: {max_seq_length: 48, batch_size: 32, epochs: 2, min_steps: 0, learning_rate: 0.003, torch_threads: 1}
tune: {n_trials: 2, lr_min: 0.001, lr_max: 0.01, epochs_min: 1, epochs_max: 1, storage: "sqlite:///optuna.db"}
"""


def cli(tmp: Path, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_RUN_ID", None)
    out = subprocess.run(
        [sys.executable, "-m", "albert_exp", *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def start(tmp: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "albert_exp", *args], cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def runs(tmp: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, max_results=5000)


def children(tmp: Path, parent_id: str) -> dict:
    return {r.data.tags["stage"]: r for r in runs(tmp) if r.data.tags.get("mlflow.parentRunId") == parent_id}


def lineage_stages(tmp: Path, uri: str) -> list[str]:
    chain = json.loads(cli(tmp, "lineage", uri, "--json").stdout)
    return [r["stage"] for r in chain["runs"] if "reuses" not in r]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reruns")
    (tmp / "tiny.yaml").write_text(TINY)
    cli(tmp, "main", "--config", "tiny.yaml")
    return tmp, json.loads((tmp / "runs" / "results.json").read_text())


COMPUTED = ("corpus", "vocab", "pretraining-data", "pretrain", "finetune")
REUSABLE = (*COMPUTED, "scratch", "baseline")  # the stages with an output directory


def test_main_twice_reuses_every_stage_explicitly(first):
    tmp, a = first
    out = cli(tmp, "main", "--config", "tiny.yaml")
    b = json.loads((tmp / "runs" / "results.json").read_text())
    for stage in (*REUSABLE, "tune", "promote"):
        assert f"{stage}: reusing run " in out.stdout, stage
    every = (*REUSABLE, "tune", "promote")
    assert sorted(b["reused"]) == sorted(stage.replace("-", "_") for stage in every)
    kids = children(tmp, b["parent_run_id"])
    first_kids = children(tmp, a["parent_run_id"])
    for stage in REUSABLE:
        assert kids[stage].data.tags["reused_run_id"] == first_kids[stage].info.run_id, stage
    for stage in ("finetune", "scratch", "baseline"):  # the same figures: the parent's summary and gain rows too
        assert {k: v for k, v in b[stage.replace("-", "_")].items() if k.startswith("test/")} == {
            k: v for k, v in a[stage.replace("-", "_")].items() if k.startswith("test/")
        }, stage
        assert b[stage]["output_dir"] == a[stage]["output_dir"], stage
    assert b["promote"]["champion_version"] == a["promote"]["champion_version"]
    assert all(r.info.status == "FINISHED" for r in runs(tmp))
    assert set(lineage_stages(tmp, "models:/reruns-phrase-tagger@champion")) >= set(COMPUTED)


def test_changed_finetune_setting_reuses_pretraining_and_retrains_finetuning(first):
    tmp, a = first
    out = cli(tmp, "main", "--config", "tiny.yaml", "--set", "finetune.epochs=1")
    b = json.loads((tmp / "runs" / "results.json").read_text())
    for stage in ("corpus", "vocab", "pretraining-data", "pretrain", "baseline"):  # the CRF: split + `baseline:`
        assert f"{stage}: reusing run " in out.stdout, stage
    assert "finetune: reusing" not in out.stdout
    assert "scratch: reusing" not in out.stdout  # fine-tuning's settings are the from-scratch run's too
    assert b["scratch"]["run_id"] != a["scratch"]["run_id"] and b["scratch"]["key"] != a["scratch"]["key"]
    assert Path(a["scratch"]["model_dir"]).is_dir() and Path(b["scratch"]["model_dir"]).is_dir()
    kids = children(tmp, b["parent_run_id"])
    ft = kids["finetune"]
    assert "reused_run_id" not in ft.data.tags and ft.data.params["finetune.epochs"] == "1"
    assert ft.data.tags["upstream.pretrain"] == a["pretrain"]["run_id"]  # trained from the same weights
    assert Path(a["finetune"]["model_dir"]).is_dir()  # the earlier fine-tuned model is still where it was
    assert set(lineage_stages(tmp, f"runs:/{ft.info.run_id}")) >= set(COMPUTED)
    # the new base config (lr 0.003, 1 epoch) lies inside the search space: the same study, one more trial
    assert "tune: reusing" not in out.stdout and "queued the finetune config as a trial" in out.stdout
    assert b["tune"]["study_name"] == a["tune"]["study_name"]
    assert sum(b["tune"]["trials"].values()) == sum(a["tune"]["trials"].values()) + 1


def test_changed_pretraining_setting_recomputes_downstream_and_keeps_the_earlier_outputs(first):
    from transformers import AlbertForPreTraining

    tmp, a = first
    out = cli(tmp, "main", "--config", "tiny.yaml", "--set", "pretrain.learning_rate=0.004")
    b = json.loads((tmp / "runs" / "results.json").read_text())
    assert "pretraining-data: reusing run " in out.stdout and "pretrain: reusing" not in out.stdout
    assert b["pretrain"]["run_id"] != a["pretrain"]["run_id"] and b["finetune"]["run_id"] != a["finetune"]["run_id"]
    assert (tmp / "runs" / "pretrain").resolve() == Path(b["pretrain"]["output_dir"]).resolve()
    AlbertForPreTraining.from_pretrained(a["pretrain"]["model_dir"])  # the earlier output: untouched, loadable
    assert json.loads((Path(a["pretrain"]["output_dir"]) / "results.json").read_text())["key"] == a["pretrain"]["key"]
    assert set(lineage_stages(tmp, "models:/reruns-phrase-tagger@champion")) >= set(COMPUTED)


def test_a_failing_corpus_rerun_keeps_the_previous_corpus(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("the soup was hot .\nthe noodles were fine .\n\nwe ordered dumplings .\n")
    bad.write_bytes(b"fine line\n\xff\xfe not utf-8\n")
    cli(tmp_path, "corpus", "--set", f"corpus.inputs={good} workdir=runs")
    before = json.loads((tmp_path / "runs" / "corpus" / "manifest.json").read_text())
    out = cli(tmp_path, "corpus", "--set", f"corpus.inputs={good},{bad} workdir=runs", check=False)
    assert out.returncode == 2 and "bad.txt" in out.stderr
    manifest = json.loads((tmp_path / "runs" / "corpus" / "manifest.json").read_text())
    assert manifest == before
    for shard in manifest["shards"]:
        assert (tmp_path / "runs" / "corpus" / shard["path"]).is_file()
    statuses = sorted(r.info.status for r in runs(tmp_path))
    assert statuses == ["FAILED", "FINISHED"]


def test_two_processes_start_on_a_fresh_store(tmp_path):
    procs = [
        start(tmp_path, "corpus", "--set", f"corpus.toy=true corpus.toy_documents=20 workdir=w{i}") for i in (0, 1)
    ]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errors)
    assert sorted(r.info.status for r in runs(tmp_path)) == ["FINISHED", "FINISHED"]


def _kill_and_rerun(tmp: Path, args: list[str], ready, what: str, monkeypatch) -> None:
    """Start the command, SIGKILL it once `ready()` holds (plus a random moment), then run it again (in this
    process: one interpreter start-up less)."""
    proc = start(tmp, *args)
    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None, f"{what} ended before the kill: " + proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, f"{what}: timed out"
        time.sleep(0.05)
    time.sleep(random.uniform(0, 0.5))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, f"{what} ended before the kill"
    assert _in_process(tmp, monkeypatch, *args) == 0


def _one_run_and_none_running(tmp: Path, results: Path) -> dict:
    """The rerun's results, after checking that one run holds the output's whole computation and that no run
    is left RUNNING."""
    res = json.loads(results.read_text())
    same = [r for r in runs(tmp) if r.data.tags.get("albert_exp.key") == res["key"]]
    assert [r.info.run_id for r in same] == [res["run_id"]]
    assert not [r for r in runs(tmp) if r.info.status == "RUNNING"]
    return res


def test_kill_finetune_then_rerun_continues_one_run(first, monkeypatch):
    tmp, _ = first
    settings = "finetune.epochs=3 finetune.learning_rate=0.002 finetune.max_train_rows=64"  # 2 batches an epoch
    args = ["finetune", "--config", "tiny.yaml", "--set", settings]
    ready = lambda: list((tmp / "runs").glob("finetune@*.partial/checkpoints/step-*"))  # noqa: E731
    _kill_and_rerun(tmp, args, ready, "finetune", monkeypatch)
    res = _one_run_and_none_running(tmp, tmp / "runs" / "finetune" / "results.json")
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(res["run_id"], "val/token_accuracy")]
    assert len(steps) == len(set(steps)) == 3  # one value per epoch, none twice (step = optimizer step)


def test_kill_pretraining_data_then_rerun_continues_one_run(first, monkeypatch, capsys):
    tmp, _ = first
    args = ["pretraining-data", "--config", "tiny.yaml", "--set", "pretraining_data.dupe_factor=3"]
    ready = lambda: list((tmp / "runs").glob("pretraining_data@*.partial/run.json"))  # noqa: E731
    _kill_and_rerun(tmp, args, ready, "pretraining-data", monkeypatch)
    res = _one_run_and_none_running(tmp, tmp / "runs" / "pretraining_data" / "results.json")
    capsys.readouterr()
    assert _in_process(tmp, monkeypatch, "lineage", f"runs:/{res['run_id']}", "--json") == 0
    chain = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in chain["runs"] if "reuses" not in r][:1] == ["pretraining-data"]


def test_rerun_scratch_and_baseline_recomputes_them_alone(first):
    tmp, a = first
    out = cli(tmp, "main", "--config", "tiny.yaml", "--rerun", "scratch,baseline")
    b = json.loads((tmp / "runs" / "results.json").read_text())
    for stage in ("scratch", "baseline"):
        assert f"{stage}: reusing" not in out.stdout, stage
        assert b[stage]["key"] == a[stage]["key"] and b[stage]["run_id"] != a[stage]["run_id"], stage
        assert (tmp / "runs" / ("scratch/finetune" if stage == "scratch" else stage)).resolve() == Path(
            b[stage]["output_dir"]
        )
    assert sorted(b["reused"]) == sorted(
        ["corpus", "vocab", "pretraining_data", "pretrain", "finetune", "tune", "promote"]
    )


def test_pretrain_stopped_at_max_steps_continues_the_same_output_and_run(tmp_path, mlflow_store):
    """max_steps is a stop point of one schedule, not an identity: stopped at step 3, then rerun without it,
    the training continues in the same output and MLflow run and equals an uninterrupted one; a stop before
    what the output already trained is a one-line user error."""
    from mlflow import MlflowClient

    from albert_exp.errors import UserError
    from albert_exp.identity import key_of
    from albert_exp.pretrain import STAGE
    from tests.conftest import stage_runner

    run = stage_runner("pretrain")
    from tests.test_pretrain import _losses, cfg_from, tiny_config

    base = {"num_train_steps": 8, "save_checkpoints_steps": 4, "eval_input": []}
    stopped_cfg = cfg_from(tmp_path, tiny_config(tmp_path, max_steps=3, **base))[0]
    full_cfg = cfg_from(tmp_path, tiny_config(tmp_path, **base))[0]
    assert key_of(STAGE, stopped_cfg) == key_of(STAGE, full_cfg)
    stopped = run(stopped_cfg)
    assert stopped["step"] == 3 and STAGE.reached(stopped_cfg, stopped)
    assert not STAGE.reached(full_cfg, stopped)  # `main` continues it rather than reusing it
    continued = run(full_cfg)
    assert continued["step"] == 8 and STAGE.reached(full_cfg, continued)
    assert continued["output_dir"] == stopped["output_dir"] and continued["run_id"] == stopped["run_id"]
    assert Path(continued["resumed_from"]).name == "step-00000003"
    steps = [m.step for m in MlflowClient().get_metric_history(continued["run_id"], "train/loss")]
    assert sorted(steps) == list(range(1, 9))  # one history, no step twice
    straight_cfg = cfg_from(tmp_path, tiny_config(tmp_path, output_dir=str(tmp_path / "straight"), **base))[0]
    straight = run(straight_cfg)
    np.testing.assert_allclose(_losses(continued), _losses(straight), rtol=1e-6, atol=1e-7)
    earlier = cfg_from(tmp_path, tiny_config(tmp_path, max_steps=2, **base))[0]
    with pytest.raises(UserError, match="trained to step 8, past the stop asked for"):
        run(earlier)


def _in_process(tmp: Path, monkeypatch, *argv: str) -> int:
    """`albert-exp <argv>` in this process (no interpreter start-up), in `tmp` with its store."""
    import mlflow
    import torch

    from albert_exp.cli import main

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    threads = torch.get_num_threads()
    try:
        return main(list(argv))
    finally:  # the stages set torch's thread count from their config: later tests keep theirs
        torch.set_num_threads(threads)


def test_stage_commands_alone_reuse_what_main_computed(first, monkeypatch, capsys):
    """`albert-exp <stage>` follows main's rule: a complete output of the same identity is reused (a line says
    which run computed it), with no new run; pretrain alone gets the toy's held-out data, as in main."""
    tmp, a = first
    before = len(runs(tmp))
    for stage in ("corpus", "vocab", "pretraining-data", "pretrain", "baseline"):
        assert _in_process(tmp, monkeypatch, stage, "--config", "tiny.yaml") == 0, stage
        out = capsys.readouterr().out
        current = json.loads((tmp / "runs" / stage.replace("-", "_") / "results.json").read_text())
        assert f"{stage}: reusing run {current['run_id']}: " in out, out[-2000:]
        assert json.loads(out[out.index("{") :])["reused_run_id"] == current["run_id"]
    assert json.loads((tmp / "runs" / "pretrain" / "results.json").read_text())["run_id"] == a["pretrain"]["run_id"]
    assert len(runs(tmp)) == before  # nothing computed, nothing logged


def test_finetune_alone_twice_reuses_and_rerun_computes_again(first, monkeypatch, capsys):
    tmp, _ = first
    args = ("finetune", "--config", "tiny.yaml", "--set", "finetune.epochs=1 finetune.learning_rate=0.004")
    assert _in_process(tmp, monkeypatch, *args) == 0
    computed = json.loads((tmp / "runs" / "finetune" / "results.json").read_text())
    assert _in_process(tmp, monkeypatch, *args) == 0
    assert f"finetune: reusing run {computed['run_id']}: " in capsys.readouterr().out
    assert _in_process(tmp, monkeypatch, *args, "--rerun") == 0
    again = json.loads((tmp / "runs" / "finetune" / "results.json").read_text())
    assert "reusing" not in capsys.readouterr().out
    assert again["key"] == computed["key"] and again["run_id"] != computed["run_id"]
    assert again["output_dir"] == computed["output_dir"]  # the same identity's place; the earlier one renamed
    assert list(Path(tmp / "runs").glob(Path(computed["output_dir"]).name + ".replaced-*"))
    assert [r.info.status for r in runs(tmp) if r.info.run_id in (computed["run_id"], again["run_id"])] == [
        "FINISHED",
        "FINISHED",
    ]


def test_pretrain_alone_reuses_a_complete_output_and_rerun_trains_afresh(tmp_path, mlflow_store, capsys):
    from albert_exp.cli import main
    from tests.test_pretrain import cfg_from, tiny_config

    _, path = cfg_from(tmp_path, tiny_config(tmp_path, num_train_steps=4, save_checkpoints_steps=2, eval_input=[]))
    assert main(["pretrain", "--config", str(path)]) == 0
    first = json.loads((tmp_path / "work" / "pretrain" / "results.json").read_text())
    capsys.readouterr()
    assert main(["pretrain", "--config", str(path)]) == 0
    assert f"pretrain: reusing run {first['run_id']}: " in capsys.readouterr().out
    assert main(["pretrain", "--config", str(path), "--rerun"]) == 0
    again = json.loads((tmp_path / "work" / "pretrain" / "results.json").read_text())
    assert again["resumed_from"] is None and again["step"] == 4  # from the start, not the complete checkpoint
    assert again["run_id"] != first["run_id"] and again["key"] == first["key"]
