"""tpu-logs as a user runs it: the CLI (in a subprocess where the process itself matters), repros of #14."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from albert_exp.cli import main
from tests import test_tpu_logs_mlflow
from tests.conftest import ROOT
from tests.tpu_logs_synth import SynthSpec, write_logs

# fixtures: one migrated SQLite store per module, copied for each test (alembic takes seconds)
_migrated_db, store = test_tpu_logs_mlflow._migrated_db, test_tpu_logs_mlflow.store


def _cli(capsys, *args: str) -> dict:
    assert main(["tpu-logs", "ingest", *args, "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def _points(run_id: str) -> tuple[dict, set]:
    """Each (metric, step)'s latest point (value, timestamp), and the (metric, step)s with two points."""
    from mlflow import MlflowClient

    client = MlflowClient()
    out, twice = {}, set()
    for key in client.get_run(run_id).data.metrics:
        if key.startswith("tpu/"):
            continue
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
            if (key, m.step) in out:
                twice.add((key, m.step))
            out[(key, m.step)] = (m.value, m.timestamp)
    return out, twice


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "albert_exp", "tpu-logs", "ingest", *args, "--no-progress"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_overlaps_resolve_the_same_way_at_once_or_appended(store, tmp_path, capsys):
    from mlflow import MlflowClient

    logs = write_logs(SynthSpec(num_train_steps=4000, crashes=(2350,), eval_every=1000, seed=31), tmp_path)
    a, b = (str(f) for f in logs.files)
    together = _cli(capsys, a, b, "--experiment", "together")
    first = _cli(capsys, a, "--experiment", "apart")
    appended = _cli(capsys, b, "--experiment", "apart", "--append")
    assert appended["run_id"] == first["run_id"]
    (at_once, none), (latest, twice) = _points(together["run_id"]), _points(appended["run_id"])
    assert at_once == latest  # values and timestamps: the later attempt's at every re-run step
    truth = dict(logs.truth.overlaps)
    # the appended run held the first attempt's values: the later ones came after them, and the run says so
    assert not none and twice == {k for k, v in truth.items() if v != logs.truth.metrics[k]}
    assert "tpu_logs.overlap" in MlflowClient().get_run(appended["run_id"]).data.tags
    for res in (together, appended):  # reported, with the rule, in both
        assert res["overlaps"]["points_superseded"] == len(truth) > 0
        assert res["overlaps"]["rule"] == "a step logged by several attempts keeps the latest attempt's value"
        assert res["restart_steps"] == [2100]
    with_values = MlflowClient().download_artifacts(together["run_id"], "tpu_logs/overlaps.csv", str(tmp_path))
    listed = pd.read_csv(with_values)
    keys = list(zip(listed["metric"], listed["step"], strict=True))
    assert dict(zip(keys, listed["value_superseded"], strict=True)) == truth
    assert dict(zip(keys, listed["value"], strict=True)) == {k: logs.truth.metrics[k] for k in truth}


def test_append_of_a_grown_file_continues_its_attempt(store, tmp_path, capsys):
    src = write_logs(SynthSpec(num_train_steps=3000, seed=32), tmp_path / "src").files[0].read_bytes()
    live = tmp_path / "live.log"
    cut = src.index(b"step = 1500") + 200
    live.write_bytes(src[: src.index(b"\n", cut) + 1])  # the job was still running
    first = _cli(capsys, str(live), "--experiment", "tpu")
    assert first["run_status"] == "KILLED" and first["restarts"] == 0
    live.write_bytes(src)  # it went on in the same file
    grown = _cli(capsys, str(live), "--experiment", "tpu", "--append")
    assert grown["run_id"] == first["run_id"] and grown["run_status"] == "FINISHED"
    assert grown["restarts"] == 0 and grown["restart_steps"] == []  # no false restart
    assert grown["overlaps"]["points_superseded"] == 0 and grown["last_step"] == 3000
    assert grown["points_relogged"] == 0  # its earlier part is the same attempt, not a restart
    # the run now stands for the grown file: ingesting it again changes nothing
    again = _cli(capsys, str(live), "--experiment", "tpu")
    assert again["status"] == "unchanged" and again["run_id"] == first["run_id"]


def test_reingest_with_another_year_makes_a_new_run(store, tmp_path, capsys):
    logs = write_logs(SynthSpec(num_train_steps=2000, cpp_header=False, seed=33), tmp_path)
    log = str(logs.files[0])
    first = _cli(capsys, log, "--experiment", "tpu")
    assert first["year_source"] == "file modification time" and first["start_time"].startswith(
        f"{pd.Timestamp.now().year}"
    )
    fixed = _cli(capsys, log, "--experiment", "tpu", "--year", "2020")
    assert fixed["status"] == "ingested" and fixed["run_id"] != first["run_id"]
    assert fixed["start_time"].startswith("2020-04-07T23:40")
    assert _cli(capsys, log, "--experiment", "tpu", "--year", "2020")["status"] == "unchanged"


def test_summary_figures_are_metrics_and_flags_come_from_the_log(store, tmp_path, capsys):
    from mlflow import MlflowClient

    logs = write_logs(SynthSpec(num_train_steps=3000, crashes=(1500,), finish=False, seed=34), tmp_path / "l")
    res = _cli(capsys, *(str(f) for f in logs.files), "--experiment", "tpu")
    run = MlflowClient().get_run(res["run_id"])
    m, p = run.data.metrics, run.data.params
    assert m["tpu/best_loss"] == res["best_loss"] and m["tpu/tpu_hours"] == res["tpu_hours"] > 0
    assert m["tpu/examples_per_s"] == res["examples_per_s_median"] and m["tpu/last_step"] == 3000
    # the log states batch, checkpoint interval and loop size, not the learning rate or steps: said so
    assert p["pretrain.batch_size"] == "512" and p["pretrain.save_checkpoints_steps"] == "1000"
    assert p["pretrain.iterations_per_loop"] == "100" and "pretrain.learning_rate" not in p
    assert any("learning_rate, num_train_steps: not in the log" in w for w in res["warnings"])
    # with the command that ran, the two runs differ in their columns: lr and the projected finish
    script = tmp_path / "run_tpu.sh"
    script.write_text(logs.truth.command.replace("0.00022", "0.00005").replace("3000", "1000000") + "\n")
    res2 = _cli(capsys, *(str(f) for f in logs.files), "--experiment", "tpu2", "--command-file", str(script))
    run2 = MlflowClient().get_run(res2["run_id"])
    assert run2.data.params["pretrain.learning_rate"] == "0.00005"
    assert run2.data.metrics["tpu/hours_to_finish"] == res2["estimated_hours_to_finish"] > 50
    assert run2.data.tags["tpu_logs.projected_finish"] == res2["projected_finish"]


def test_a_bad_run_id_is_one_line_and_exit_2(store, tmp_path):
    log = write_logs(SynthSpec(num_train_steps=1000, seed=35), tmp_path).files[0]
    proc = _spawn(str(log), "--append", "--run-id", "0123456789abcdef")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "--run-id: no MLflow run '0123456789abcdef'" in err


def _run_of(experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return runs[0] if runs else None


@pytest.mark.timeout(240)
def test_follow_ends_cleanly_on_sigterm_and_waits_for_the_eval_block(store, tmp_path):
    # 1. SIGTERM (kill, timeout, docker stop, systemd) while following: the run is wrapped up, not left RUNNING.
    data = write_logs(SynthSpec(num_train_steps=2000, finish=False, seed=36), tmp_path / "a").files[0].read_bytes()
    live = tmp_path / "live.log"
    live.write_bytes(data)
    proc = _spawn(str(live), "--follow", "--poll", "0.1", "--experiment", "killed")
    deadline = time.monotonic() + 120
    while (run := _run_of("killed")) is None or "train/loss" not in run.data.metrics:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    res = json.loads(out)
    run = _run_of("killed")
    assert run.info.status == "KILLED" and res["run_status"] == "KILLED" and res["last_step"] == 2000
    assert run.data.tags["tpu_logs.complete"] == "true" and run.data.tags["tpu_logs.following"] == "false"
    assert "interrupted" in res["status_reason"]

    # 2. --do_eval: the eval block comes after the end-of-training lines and is not lost.
    logs = write_logs(SynthSpec(num_train_steps=2000, final_eval=True, seed=37), tmp_path / "b")
    data = logs.files[0].read_bytes()
    end = data.index(b"Shutdown TPU system.")
    end = data.index(b"\n", end) + 1
    live2 = tmp_path / "live2.log"
    live2.write_bytes(data[:end])  # training has finished; the evaluation is compiling
    proc = _spawn(str(live2), "--follow", "--poll", "0.1", "--finish-wait", "3", "--experiment", "eval")

    def late_eval():
        while _run_of("eval") is None:
            time.sleep(0.2)
        time.sleep(1.0)
        with live2.open("ab") as f:
            f.write(data[end:])

    t = threading.Thread(target=late_eval)
    t.start()
    out, err = proc.communicate(timeout=180)
    t.join()
    assert proc.returncode == 0, err
    res = json.loads(out)
    assert res["run_status"] == "FINISHED" and res["last_eval"]["step"] == 2000
    truth = {k: v for k, v in logs.truth.metrics.items() if k[0].startswith("eval/")}
    points, twice = _points(res["run_id"])
    got = {k: v[0] for k, v in points.items() if k[0].startswith("eval/")}
    assert got == truth and len(truth) == 5 and not twice
