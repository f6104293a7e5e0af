"""The tracking boundary: stages run without a store through the fake, runs are bound to their ids, and runs of
dead processes are closed by the next command."""

from __future__ import annotations

import subprocess
import sys

from albert_exp import tracking
from albert_exp.config import load_config
from tests.conftest import stage_runner


def test_a_stage_runs_offline_through_the_fake(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [f"workdir={tmp_path / 'w'}", "corpus.toy=true", "corpus.toy_documents=20"])
    with tracking.offline() as runs:
        res = stage_runner("corpus")(cfg)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    (run,) = runs
    assert run.tags["corpus_sha256"] == res["corpus_sha256"]
    assert run.metrics["corpus/documents"] == [(0, 20.0)]
    assert "manifest.json" in run.artifacts and "results.json" in run.artifacts


def test_trackers_log_into_their_own_run_not_the_active_one(mlflow_store):
    from mlflow import MlflowClient

    cfg = load_config(None, ["name=bound"])
    with tracking.stage_run(cfg, "main", "outer") as outer:
        with tracking.stage_run(cfg, "corpus", "inner") as inner:
            outer.log_metrics({"x": 1.0}, step=3)  # the inner run is the active one meanwhile
            inner.log_metrics({"y": 2.0}, step=4)
            assert tracking.current_run_id() == inner.run_id
        assert tracking.current_run_id() == outer.run_id
    client = MlflowClient()
    a, b = client.get_run(outer.run_id), client.get_run(inner.run_id)
    assert a.data.metrics == {"x": 1.0} and b.data.metrics == {"y": 2.0}
    assert b.data.tags["mlflow.parentRunId"] == outer.run_id
    assert b.data.tags[tracking.PID] == str(__import__("os").getpid())
    assert a.info.status == b.info.status == "FINISHED"


def test_runs_of_dead_processes_are_marked_killed_by_the_next_command(mlflow_store):
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.create_experiment("sweep")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = client.create_run(exp, tags={**tracking.who(), tracking.PID: str(dead.pid)}).info.run_id
    alive = client.create_run(exp, tags=tracking.who()).info.run_id
    elsewhere = client.create_run(exp, tags={**tracking.who(), tracking.HOST: "another-host"}).info.run_id
    assert tracking.sweep_dead_runs([exp]) == [orphan]
    run = client.get_run(orphan)
    assert run.info.status == "KILLED" and "is gone" in run.data.tags[tracking.KILLED_REASON]
    assert client.get_run(alive).info.status == client.get_run(elsewhere).info.status == "RUNNING"


def test_sigterm_inside_a_stage_closes_its_run_as_killed_and_restores_the_handler(mlflow_store):
    import os
    import signal

    import pytest
    from mlflow import MlflowClient

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with tracking.stage_run(load_config(None, ["name=term"]), "corpus", "stopped") as tracker:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler stopping the job
    assert MlflowClient().get_run(tracker.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


def bulk_log_matches_log_batch(monkeypatch) -> None:
    """RunRecord.log_points into the current store through the bulk insert, and the same points through MLflow's
    `log_batch` into a second run: the same history (steps, times, values; NaN and +-inf as MLflow stores them)
    and the same latest values, including where the runs already held a later or an earlier point of a key. A
    repeat of points the run has falls back to `log_batch`, which skips them."""
    import math
    import random

    from mlflow import MlflowClient

    used = []
    bulk_log = tracking.bulk._bulk_log
    monkeypatch.setattr(tracking.bulk, "_bulk_log", lambda *a: used.append(bulk_log(*a)) or used[-1])
    store = tracking.RunStore("bulk")
    bulk, plain = store.create("bulk", None, {}), store.create("log_batch", None, {})
    for run in (bulk, plain):  # before: `a` at a later step than the new points, `b` at an earlier one
        run.log_points(["a", "b"], [5.0, 1.0], [10, 10], [9_000, 0])
    rng = random.Random(0)
    special = [math.nan, math.inf, -math.inf, 0.0]
    points = [
        ("abc"[i % 3], rng.choice(special) if i % 97 == 0 else rng.random(), 1_000 + i // 2, i) for i in range(2_500)
    ]
    points += [points[10], ("c", 7.5, 1_005, 10), ("c", -1.0, 9_999, 2_499)]  # a repeat; a step twice; newest c
    columns = [list(c) for c in zip(*points, strict=True)]
    assert bulk.log_points(*columns) == len(points) and used == [True]
    monkeypatch.setattr(tracking.bulk, "_bulk_log", lambda *a: False)
    assert plain.log_points(*columns) == len(points)

    client = MlflowClient()

    def seen(run_id: str) -> tuple[dict, dict]:
        def show(v: float) -> str:
            return "nan" if math.isnan(v) else repr(v)

        history = {
            key: sorted((m.step, m.timestamp, show(m.value)) for m in client.get_metric_history(run_id, key))
            for key in "abc"
        }
        return history, {k: show(v) for k, v in client.get_run(run_id).data.metrics.items()}

    assert seen(bulk.run_id) == seen(plain.run_id)
    history, latest = seen(bulk.run_id)
    assert len(history["a"]) == 1 + 834 and latest["a"] == "5.0" and latest["c"] == "-1.0"
    assert any(v == "nan" for _, _, v in history["b"]) and any(
        v == "1.7976931348623157e+308" for k in "abc" for _, _, v in history[k]
    )

    monkeypatch.setattr(tracking.bulk, "_bulk_log", lambda *a: used.append(bulk_log(*a)) or used[-1])
    assert bulk.log_points(*columns) == len(points) and used == [True, False]  # the run has them: log_batch
    assert seen(bulk.run_id) == (history, latest)


def test_bulk_log_into_sqlite_matches_log_batch(mlflow_store, monkeypatch):
    bulk_log_matches_log_batch(monkeypatch)


def test_a_sigterm_while_a_run_opens_or_ends_waits_until_it_is_closable():
    """SIGTERM inside interrupts_deferred (a run being created or ended) is raised as KeyboardInterrupt when the
    block ends, not in the middle of it; outside it, at once."""
    import os
    import signal

    import pytest

    from albert_exp.tracking.runs import interrupts_deferred, signals_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    done = []
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        with signals_as_interrupt():
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("the block went on")
            done.append("not reached")
    assert done == ["the block went on"]
    with pytest.raises(KeyboardInterrupt):
        with signals_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("not reached")
    assert done == ["the block went on"] and signal.getsignal(signal.SIGTERM) == before
