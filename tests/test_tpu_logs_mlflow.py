"""tpu-logs into MLflow: back-filled steps and times, status, idempotence, --append, resume, --follow, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter

import pandas as pd
import pytest
from mlflow import MlflowClient

from albert_exp.errors import UserError
from albert_exp.tpu_logs.ingest import TAG_COMPLETE, ingest
from tests.tpu_logs_synth import SynthSpec, write_logs


@pytest.fixture(scope="module")
def _migrated_db(tmp_path_factory):
    """One store created (and migrated, seconds of alembic) per module; each test starts from a copy."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(_migrated_db, mlflow_store, tmp_path):
    shutil.copyfile(_migrated_db, tmp_path / "mlflow.db")  # mlflow_store's URI points here
    return mlflow_store


def _ms(dt) -> int:
    return int(pd.Timestamp(dt, tz="UTC").value // 1_000_000)


def _history(client, run_id, key, relogged=frozenset()) -> dict[int, tuple[float, int]]:
    """{step: (value, timestamp)} of each step's latest point. A step has two points exactly where `relogged`
    says (a later attempt's value logged after the earlier one's, which the run held already)."""
    hist = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    twice = {s for s, n in Counter(m.step for m in hist).items() if n > 1}
    assert twice == set(relogged), f"{key}: steps logged twice {sorted(twice)} (expected {sorted(relogged)})"
    return {m.step: (m.value, m.timestamp) for m in hist}


def _relogged(logs, key, steps=range(10**9)) -> set[int]:
    """Steps of `key` whose superseded value differs from the later one (the ones logged again), within steps."""
    t = logs.truth
    return {s for (m, s), v in t.overlaps.items() if m == key and s in steps and v != t.metrics[(m, s)]}


def _truth(logs, key) -> dict[int, tuple[float, int]]:
    return {s: (v, _ms(logs.truth.times[(m, s)])) for (m, s), v in logs.truth.metrics.items() if m == key}


def test_ingest_backfills_steps_times_params_and_is_idempotent(store, tmp_path):
    from mlflow import MlflowClient

    logs = write_logs(
        SynthSpec(num_train_steps=4000, crashes=(2350,), eval_every=1000, echo_command=True, seed=11), tmp_path / "logs"
    )
    res = ingest([str(f) for f in logs.files], experiment="tpu", progress=False)
    assert res["status"] == "ingested" and res["run_status"] == "FINISHED"
    client = MlflowClient()
    run = client.get_run(res["run_id"])
    for key in ("train/loss", "train/global_step_per_s", "train/examples_per_s", "eval/masked_lm_accuracy"):
        assert _history(client, run.info.run_id, key) == _truth(logs, key), key
    assert run.info.status == "FINISHED"
    assert run.info.start_time == _ms(logs.truth.start_time) and run.info.end_time == _ms(logs.truth.end_time)
    p = run.data.params
    assert p["flags.num_train_steps"] == "4000" and p["pretrain.batch_size"] == "512"
    assert p["pretrain.learning_rate"] == "0.00022" and p["log.input_file_count"] == "4"
    assert p["flags.input_file"] == "gs://my-bucket/albert/data/*.tfrecord"
    assert run.data.tags["tpu_logs.last_checkpoint"] == logs.truth.checkpoints[4000]
    assert run.data.tags["stage"] == "tpu-logs" and run.data.tags[TAG_COMPLETE] == "true"
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "tpu_logs")}
    assert {
        "tpu_logs/table.parquet",
        "tpu_logs/table.csv",
        "tpu_logs/checkpoints.csv",
        "tpu_logs/loss_curve.png",
        "tpu_logs/summary.json",
        "tpu_logs/results.json",
    } <= arts
    # Same files again (another order): nothing changes.
    again = ingest([str(f) for f in reversed(logs.files)], experiment="tpu", progress=False)
    assert again["status"] == "unchanged" and again["run_id"] == run.info.run_id
    exp = client.get_experiment_by_name("tpu")
    assert len(client.search_runs([exp.experiment_id])) == 1
    assert _history(client, run.info.run_id, "train/loss") == _truth(logs, "train/loss")


def test_unfinished_run_is_killed_then_append_adds_the_restart(store, tmp_path):
    from mlflow import MlflowClient

    logs = write_logs(SynthSpec(num_train_steps=4000, crashes=(1700, 3300), seed=12), tmp_path / "logs")
    f0, f1, f2 = (str(f) for f in logs.files)
    first = ingest([f0, f1], experiment="tpu", run_name="b512", progress=False)
    client = MlflowClient()
    assert first["run_status"] == "KILLED" and first["last_step"] == 3300
    appended = ingest([f0, f1, f2], experiment="tpu", run_name="b512", append=True, progress=False)
    assert appended["status"] == "ingested" and appended["run_id"] == first["run_id"]
    assert appended["run_status"] == "FINISHED"
    # steps 3100..3300 were logged by attempt 2 and re-run by attempt 3: the run held attempt 2's values, so
    # attempt 3's are logged after them (each such step's latest point), and the run says so
    for key in ("train/loss", "train/examples_per_s"):
        relogged = _relogged(logs, key, range(3001, 10**9))
        assert relogged and _history(client, first["run_id"], key, relogged) == _truth(logs, key), key
    assert appended["overlaps"]["points_superseded"] == len(logs.truth.overlaps)  # the first ingest's too
    assert appended["points_relogged"] > 0
    assert "later attempt" in client.get_run(first["run_id"]).data.tags["tpu_logs.overlap"]
    assert appended["restart_steps"] == [1100, 3100] and appended["first_step"] == 100
    # Appending again, or a plain ingest of all three files, finds the same run and changes nothing.
    assert ingest([f2], experiment="tpu", append=True, progress=False)["status"] == "unchanged"
    assert ingest([f0, f1, f2], experiment="tpu", progress=False)["status"] == "unchanged"
    assert len(client.search_runs([client.get_experiment_by_name("tpu").experiment_id])) == 1


def test_an_interrupted_ingest_is_completed_not_duplicated(store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    import albert_exp.tpu_logs.ingest as ing

    logs = write_logs(SynthSpec(num_train_steps=3000, seed=13), tmp_path / "logs")
    real = ing.write_tables

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ing, "write_tables", boom)
    with pytest.raises(RuntimeError):
        ingest([str(logs.files[0])], experiment="tpu", progress=False)
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("tpu").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags[TAG_COMPLETE] == "false"
    monkeypatch.setattr(ing, "write_tables", real)
    res = ingest([str(logs.files[0])], experiment="tpu", progress=False)
    assert res["run_id"] == run.info.run_id and res["run_status"] == "FINISHED"
    assert res["points_logged"] == 0 and res["points_already_in_run"] == len(logs.truth.metrics)
    assert _history(client, run.info.run_id, "train/loss") == _truth(logs, "train/loss")


def test_log_without_loss_lines_is_a_clear_error(store, tmp_path):
    from albert_exp.cli import main

    f = tmp_path / "stdout.log"
    f.write_text("INFO:tensorflow:Querying Tensorflow master for TPU system metadata.\nhello\n")
    with pytest.raises(UserError, match="no `loss = ..., step = ...` lines in 2 lines"):
        ingest([str(f)], experiment="tpu", progress=False)
    assert main(["tpu-logs", "ingest", str(tmp_path / "missing.log")]) == 2


def test_cli_ingest_with_intermixed_options_and_a_command_file(store, tmp_path, capsys):
    from mlflow import MlflowClient

    from albert_exp.cli import main
    from albert_exp.config import load_config
    from albert_exp.tpu_logs.command import build_command
    from tests.conftest import ROOT

    script = tmp_path / "run_tpu.sh"
    script.write_text(build_command(load_config(ROOT / "experiments" / "tpu_recipe.yaml")) + "\n")
    logs = write_logs(
        SynthSpec(num_train_steps=3000, crashes=(1500,), cpp_header=False, finish=False, seed=14), tmp_path
    )
    a, b = (str(f) for f in logs.files)
    assert (
        main(
            [
                "tpu-logs",
                "ingest",
                a,
                "--year",
                "2020",
                b,
                "--experiment",
                "cli",
                "--no-progress",
                "--command-file",
                str(script),
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["year_source"] == "--year" and res["run_status"] == "KILLED"
    # the recipe's 1M steps at ~5.2 steps/s leave about 53 hours after step 3000
    assert 50 < res["estimated_hours_to_finish"] < 56
    params = MlflowClient().get_run(res["run_id"]).data.params
    assert params["pretrain.num_train_steps"] == "1000000" and params["flags.num_warmup_steps"] == "25000"
    assert params["flags.tpu_name"] == "YOUR_TPU" and params["pretrain.batch_size"] == "512"


def test_follow_logs_points_as_the_file_grows(store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    import albert_exp.tpu_logs.follow as fol
    from albert_exp.tpu_logs.follow import follow

    following, reads, real_read = threading.Event(), [], fol._Tail.read

    def spy(self):  # the writer starts once the follow loop polls, so the growth really is seen live
        following.set()
        lines = real_read(self)
        if lines:
            reads.append(len(lines))
        return lines

    monkeypatch.setattr(fol._Tail, "read", spy)

    src = write_logs(SynthSpec(num_train_steps=3000, eval_every=1000, seed=15), tmp_path / "src")
    data = src.files[0].read_bytes()
    live = tmp_path / "live.log"
    live.write_bytes(data[:2000])  # the job has started: a few header lines, the last one half-written

    def writer():
        following.wait(60)
        pos = 2000
        while pos < len(data):
            time.sleep(0.25)
            live.open("ab").write(data[pos : pos + 6007])  # chunks end in the middle of lines
            pos += 6007

    t = threading.Thread(target=writer)
    t.start()
    res = follow([str(live)], experiment="tpu", poll_s=0.02, max_s=60, finish_wait_s=0.5, progress=False)
    t.join()
    assert res["run_status"] == "FINISHED" and res["last_step"] == 3000
    assert len(reads) >= 5  # points arrived over many reads, not in one go
    client = MlflowClient()
    for key in ("train/loss", "train/examples_per_s", "eval/loss"):
        assert _history(client, res["run_id"], key) == _truth(src, key), key
    run = client.get_run(res["run_id"])
    assert run.data.tags["tpu_logs.following"] == "false"
    # the finished follow is an ordinary ingested run: ingesting the file again changes nothing
    assert ingest([str(live)], experiment="tpu", progress=False)["status"] == "unchanged"


def test_follow_stops_as_killed_when_the_log_goes_quiet(store, tmp_path):
    from albert_exp.tpu_logs.follow import follow

    logs = write_logs(SynthSpec(num_train_steps=2000, finish=False, seed=16), tmp_path)
    res = follow([str(logs.files[0])], experiment="tpu", poll_s=0.02, idle_exit_s=0.2, progress=False)
    assert res["run_status"] == "KILLED" and res["last_step"] == 2000
    assert "stopped following" in res["status_reason"]


def test_mlflow_run_entry_point_logs_into_its_run(store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.create_experiment("tpu")
    outer = client.create_run(exp)  # what `mlflow run . -e tpu-logs` creates and exports
    monkeypatch.setenv("MLFLOW_RUN_ID", outer.info.run_id)
    logs = write_logs(SynthSpec(num_train_steps=2000, seed=17), tmp_path)
    res = ingest([str(logs.files[0])], experiment="tpu", progress=False)
    assert res["run_id"] == outer.info.run_id
    run = client.get_run(outer.info.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time >= run.info.start_time
    assert pd.Timestamp(run.data.tags["tpu_logs.end_time"]) == pd.Timestamp(logs.truth.end_time, tz="UTC")
    assert _history(client, run.info.run_id, "train/loss") == _truth(logs, "train/loss")


def test_background_parse_gives_the_same_run(store, tmp_path):
    from mlflow import MlflowClient

    logs = write_logs(SynthSpec(num_train_steps=3000, crashes=(1750,), eval_every=1000, seed=18), tmp_path / "l")
    paths = [str(f) for f in logs.files]
    busy = threading.Event()  # a second thread: the parsing process is spawned, not forked
    threading.Thread(target=busy.wait, daemon=True).start()
    try:
        res = ingest(paths, experiment="bg", background=True, progress=False)
    finally:
        busy.set()
    assert res["timings"]["parse_process"] == "spawn" and res["run_status"] == "FINISHED"
    # from a fresh command (one thread) it is forked
    code = f"import json; from albert_exp.tpu_logs.ingest import ingest; print(json.dumps(ingest({paths!r}, "
    code += "experiment='bg-fork', background=True, progress=False, out_dir='fork'), default=str))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    forked = json.loads(out.stdout.splitlines()[-1])
    assert forked["timings"]["parse_process"] == "fork" and forked["run_status"] == "FINISHED"
    client = MlflowClient()
    for key in ("train/loss", "train/examples_per_s", "eval/loss"):
        assert _history(client, res["run_id"], key) == _truth(logs, key), key
        assert _history(client, forked["run_id"], key) == _truth(logs, key), key
    # errors raised in the parsing process come back as they are
    with pytest.raises(UserError, match="unknown time zone"):
        ingest([str(logs.files[0])], experiment="bg2", timezone="Mars/Olympus", background=True, progress=False)
    # and an unchanged ingest stops the parsing process it started
    assert (
        ingest([str(f) for f in logs.files], experiment="bg", background=True, progress=False)["status"] == "unchanged"
    )


def test_follow_append_adds_a_restart_and_a_later_follow_continues_the_grown_file(store, tmp_path):
    from albert_exp.tpu_logs.follow import follow

    logs = write_logs(SynthSpec(num_train_steps=3000, crashes=(1500,), seed=19), tmp_path / "logs")
    first_file, data = str(logs.files[0]), logs.files[1].read_bytes()
    live = tmp_path / "live.log"
    live.write_bytes(data[: len(data) // 2])
    first = ingest([first_file], experiment="tpu", progress=False)
    kw = dict(experiment="tpu", append=True, poll_s=0.02, idle_exit_s=0.2, finish_wait_s=0.2, progress=False)
    part = follow([str(live)], **kw)  # the second attempt, followed while it runs, then stopped
    assert part["run_id"] == first["run_id"] and part["run_status"] == "KILLED"
    assert part["restart_steps"] == [1100] and part["first_step"] == 100
    live.write_bytes(data)  # it ran on; following again picks up where the file grew
    done = follow([str(live)], **kw)
    assert done["run_id"] == first["run_id"] and done["run_status"] == "FINISHED"
    assert done["restart_steps"] == [1100] and done["overlaps"]["points_superseded"] == len(logs.truth.overlaps) > 0
    client = MlflowClient()
    for key in ("train/loss", "train/examples_per_s"):  # the re-run steps: attempt 1's values, then attempt 2's
        assert _history(client, first["run_id"], key, _relogged(logs, key)) == _truth(logs, key), key
    assert "tpu_logs.overlap" in client.get_run(first["run_id"]).data.tags
    assert ingest([first_file, str(live)], experiment="tpu", progress=False)["status"] == "unchanged"
