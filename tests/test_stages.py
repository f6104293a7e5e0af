"""The stage machinery as a user meets it (issue 21): one executor for `main` and the stage commands, a lock per
workdir, stage subsets, outputs that never move a user's file, identities that do not depend on the workdir,
and `torchrun` ranks that leave side effects to rank 0. Every case goes through the CLI as a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.test_reruns import TINY, cli, runs

DATA = "stages=[corpus,vocab,pretraining-data]"


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    return tmp_path


def test_a_second_main_with_a_search_reuses_finetuning_and_registers_nothing(tiny):
    """The search's base trial carries fine-tuning's identity; the reuse look-up must still find the finetune
    run (the one its output names), so an identical rerun trains nothing and registers no version."""
    import optuna
    from mlflow import MlflowClient

    base_in_space = "tune.epochs_max=2"  # the fine-tuning config (2 epochs) is a point of the search
    cli(tiny, "main", "--config", "tiny.yaml", "--set", base_in_space)
    first = json.loads((tiny / "runs" / "results.json").read_text())
    # issue 28: the search's base trial is the finetune run (same identity), recorded, not trained again
    study = optuna.load_study(study_name=first["tune"]["study_name"], storage=f"sqlite:///{tiny / 'optuna.db'}")
    (base,) = [tr for tr in study.trials if tr.params == {"learning_rate": 0.003, "epochs": 2}]
    assert base.user_attrs["same_as_run"] == base.user_attrs["mlflow_run_id"] == first["finetune"]["run_id"]
    # the objective follows finetune.select_metric (phrase_f1 by default): the trial is the finetune run's
    assert first["tune"]["objective"] == "val/phrase_f1"
    assert base.value == first["finetune"]["val/phrase_f1"] and len(base.intermediate_values) == 2
    assert not [r for r in runs(tiny) if r.data.tags.get("optuna_trial") == str(base.number)], "base trial trained"
    client = MlflowClient(f"sqlite:///{tiny / 'mlflow.db'}")
    versions = len(client.search_model_versions("name='reruns-phrase-tagger'"))
    out = cli(tiny, "main", "--config", "tiny.yaml", "--set", base_in_space)
    assert "finetune: reusing run" in out.stdout and "tune: reusing run" in out.stdout
    assert len(client.search_model_versions("name='reruns-phrase-tagger'")) == versions
    assert not list((tiny / "runs").glob("*.replaced-*")), "an output was computed again"
    promotes = [r for r in runs(tiny) if r.data.tags.get("stage") == "promote"]
    assert sum("reused_run_id" not in r.data.tags for r in promotes) == 1, "one promotion run for both candidates"


def test_two_mains_on_one_workdir_one_waits_its_turn_and_no_link_dangles(tiny):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tiny / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "albert_exp", "main", "--config", "tiny.yaml"]
    first = subprocess.Popen(cmd, cwd=tiny, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tiny / "runs" / ".albert-exp.lock"
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.is_file() and lock.read_text()):
        time.sleep(0.05)
    second = subprocess.run([*cmd, "--set", DATA], cwd=tiny, env=env, capture_output=True, text=True, timeout=300)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-6000:]
    assert second.returncode == 2, second.stdout[-1000:] + second.stderr[-1000:]
    (line,) = second.stderr.strip().splitlines()
    assert "in use by `albert-exp main`" in line and f"pid {first.pid}" in line and "Traceback" not in line
    for link in ("corpus", "vocab", "pretraining_data", "pretrain", "finetune"):
        assert (tiny / "runs" / link / "results.json").is_file(), link
    # and once the first is done, the same command runs (everything reused)
    out = cli(tiny, "main", "--config", "tiny.yaml", "--set", DATA)
    assert "pretraining-data: reusing run" in out.stdout


def test_a_data_only_subset_runs_through_main_and_a_missing_input_names_its_stage(tiny):
    out = cli(tiny, "main", "--config", "tiny.yaml", "--set", DATA)
    results = json.loads((tiny / "runs" / "results.json").read_text())
    assert {"corpus", "vocab", "pretraining_data"} <= set(results) and "pretrain" not in results
    assert (tiny / "runs" / "pretraining_data" / "manifest.json").is_file()
    assert "pretrain" not in {r.data.tags.get("stage") for r in runs(tiny)}
    assert "error" not in out.stderr.lower()
    # the GPU box: pretraining alone reads the data prepared above (no corpus or vocabulary stage in the subset)
    fresh = tiny / "other"
    fresh.mkdir()
    (fresh / "tiny.yaml").write_text(TINY)
    bad = cli(fresh, "main", "--config", "tiny.yaml", "--set", "stages=[finetune]", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    (line,) = [x for x in bad.stderr.splitlines() if x.startswith("error:")]
    assert "`finetune` needs the output of `corpus`" in line and "albert-exp corpus --config tiny.yaml" in line
    assert not (fresh / "mlflow.db").exists() or not runs(fresh), "no run for a plan that cannot start"


def test_the_same_inputs_in_two_workdirs_give_the_same_identities(tiny):
    """Identities digest contents, never paths: the vocabulary trained in another workdir is the same bytes."""
    for w in ("w1", "w2"):
        cli(tiny, "main", "--config", "tiny.yaml", "--set", f"{DATA} workdir={w}")
    a = json.loads((tiny / "w1" / "results.json").read_text())
    b = json.loads((tiny / "w2" / "results.json").read_text())
    for stage in ("corpus", "vocab", "pretraining_data"):
        assert a[stage]["key"] == b[stage]["key"], stage
    tok = [hashlib.sha256((tiny / w / "vocab" / "spiece.model").read_bytes()).hexdigest() for w in ("w1", "w2")]
    assert tok[0] == tok[1]


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_users_path_as_a_stage_output_is_refused_and_left_alone(tiny, kind):
    cli(tiny, "main", "--config", "tiny.yaml", "--set", "stages=[corpus,vocab]")
    mine = tiny / "mine"
    if kind == "file":
        mine.write_text("my notes\n")
    else:
        mine.mkdir()
        (mine / "keep.txt").write_text("keep\n")
    before = sorted((p.name, p.read_bytes()) for p in [mine, *mine.rglob("*")] if p.is_file())
    out = cli(tiny, "pretraining-data", "--config", "tiny.yaml", "--output-dir", str(mine), check=False)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "did not create" in line and str(mine) in line and "Traceback" not in line
    assert sorted((p.name, p.read_bytes()) for p in [mine, *mine.rglob("*")] if p.is_file()) == before
    assert not list(tiny.glob("mine@before-*"))
    assert all(r.info.status != "RUNNING" for r in runs(tiny))


def test_torchrun_pretraining_from_a_fresh_workdir_prints_one_result(tiny):
    """Rank 0 alone makes the held-out data (the toy's) and prints the result; rank 1 waits and computes."""
    cli(tiny, "main", "--config", "tiny.yaml", "--set", DATA)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tiny / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    env.update(OMP_NUM_THREADS="1")
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--rdzv-backend=c10d"]
    cmd += [f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--max-restarts=0", "-m", "albert_exp", "pretrain"]
    cmd += ["--config", "tiny.yaml", "--set", "pretrain.num_workers=2"]
    out = subprocess.run(cmd, cwd=tiny, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count('"run_id"') == 1, out.stdout[-3000:]
    result = json.loads((tiny / "runs" / "pretrain" / "results.json").read_text())
    assert result["derived"]["derived.world_size"] == 2 and result["run_id"]
    assert (tiny / "runs" / "eval_data" / "results.json").is_file()
    pretrain_runs = [r for r in runs(tiny) if r.data.tags.get("stage") == "pretrain"]
    assert [r.info.status for r in pretrain_runs] == ["FINISHED"]


def test_the_mlproject_runs_a_data_only_subset(tiny):
    """`mlflow run` with the stage subset as a parameter, as the MLproject's card shows."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tiny / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_RUN_ID", None)
    venv = Path(sys.executable).parent  # the MLproject's command runs `python` from PATH, as in an activated venv
    env["PATH"] = f"{venv}{os.pathsep}{env['PATH']}"
    cmd = [str(venv / "mlflow"), "run", str(ROOT), "-e", "main", "--env-manager", "local"]
    cmd += ["--experiment-name", "newcomer"]  # not the YAML's name: the runs and every printed line follow it
    cmd += ["-P", f"config={tiny / 'tiny.yaml'}", "-P", f"set={DATA} workdir={tiny / 'runs'}"]
    out = subprocess.run(cmd, cwd=tiny, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tiny / "runs" / "pretraining_data" / "manifest.json").is_file()
    assert not (tiny / "runs" / "pretrain").exists()
    assert "in experiment 'newcomer'" in out.stdout and "'reruns'" not in out.stdout
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tiny / 'mlflow.db'}")
    exp = client.get_experiment_by_name("newcomer")
    names = {r.info.run_name for r in client.search_runs([exp.experiment_id])}
    assert "main reruns" in names and {"corpus toy", "pretraining-data seq 64 dupe 1"} <= names, names
    assert client.get_experiment_by_name("reruns") is None


def test_finetune_from_the_pretrained_best_finds_its_tokenizer(tiny):
    """The README's pattern `finetune --model-dir <workdir>/pretrain/best`: the best weights carry their vocabulary."""
    cli(tiny, "main", "--config", "tiny.yaml", "--set", "stages=[corpus,vocab,pretraining-data,pretrain]")
    best = tiny / "runs" / "pretrain" / "best"
    assert (best / "tokenizer_config.json").is_file() and (best / "spiece.model").is_file()
    cli(tiny, "finetune", "--config", "tiny.yaml", "--model-dir", str(best), "--set", "finetune.epochs=1")
    result = json.loads((tiny / "runs" / "finetune" / "results.json").read_text())
    assert result["test/token_accuracy"] > 0 and result["run_id"]


def test_dynamic_pretraining_data_keeps_the_toys_held_out_evaluation(tiny):
    """With `pretraining_data.mode: dynamic` the held-out records stay static TFRecords (fixed masks: the same
    evaluation at every step); they were Arrow files pretraining read as TFRecords ("bad length CRC")."""
    dynamic = ("--set", "pretraining_data.mode=dynamic")
    cli(tiny, "main", "--config", "tiny.yaml", "--set", "stages=[corpus,vocab,pretraining-data,pretrain]", *dynamic)
    result = json.loads((tiny / "runs" / "pretrain" / "results.json").read_text())
    assert result["best"]["metric"] == "eval/loss", result["best"]
    assert list((tiny / "runs" / "eval_data" / "records").glob("*.tfrecord*"))
