"""Scale-out and team mode against a real PostgreSQL server (Debian's `postgresql` package; `.ci/run` installs it).

The fixture runs initdb and the server as an unprivileged user (PostgreSQL refuses root) in a temporary data
directory, listening on 127.0.0.1 on a free port; it is stopped and removed afterwards. Without the binaries
the tests are skipped with a message saying what to install.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, http_process, mlflow_cli_env
from tests.test_tune import TINY, make_data

ROOT = Path(__file__).resolve().parents[1]


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class Postgres:
    def __init__(self, port: int, user: str):
        self.port, self.user = port, user

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="module")
def postgres():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries not found: `apt-get install -y postgresql` (.ci/run does it)")
    pytest.importorskip("psycopg", reason="psycopg is a pinned dependency: `make install`")
    run_as: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="albert-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's `postgres` user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    user = "albert"
    try:
        subprocess.run(
            [*run_as, initdb, "-D", str(data / "db"), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        opts = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=200"
        subprocess.run(
            [
                *run_as,
                pg_ctl,
                "-D",
                str(data / "db"),
                "-o",
                opts,
                "-l",
                str(data / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
    except subprocess.CalledProcessError as exc:
        log = (data / "server.log").read_text() if (data / "server.log").exists() else ""
        shutil.rmtree(data, ignore_errors=True)
        raise AssertionError(f"PostgreSQL did not start: {exc.stderr.decode()[-2000:]} {log[-2000:]}") from None
    try:
        yield Postgres(port, user)
    finally:
        subprocess.run(
            [*run_as, pg_ctl, "-D", str(data / "db"), "-m", "fast", "-w", "stop"], capture_output=True, timeout=60
        )
        shutil.rmtree(data, ignore_errors=True)


# A worker that imports everything first, says it is ready, then waits for the start signal: the workers
# released together reach the empty storage within milliseconds of each other (the race real teams hit).
BARRIER = """
import sys, time
from pathlib import Path
import albert_exp.cli, albert_exp.tune, mlflow, optuna, sqlalchemy, torch
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.005)
"""
RUN_CLI = "sys.exit(albert_exp.cli.main(sys.argv[3:]))"


def start_together(cmds: list[list[str]], where: Path, run: str = RUN_CLI, **kw) -> list[subprocess.Popen]:
    """Start processes held at a barrier until all are ready, then release them at once; each then runs `run`
    (default: the CLI with its command's arguments)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BARRIER + run, str(where / f"ready{i}"), str(where / "go"), *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **kw,
        )
        for i, cmd in enumerate(cmds)
    ]
    deadline = time.time() + 300
    while not all((where / f"ready{i}").exists() for i in range(len(cmds))):
        dead = [p for p in procs if p.poll() is not None]
        assert not dead and time.time() < deadline, [p.communicate()[0][-3000:] for p in dead] or "not ready"
        time.sleep(0.05)
    (where / "go").touch()
    return procs


OPEN_STUDY = """
cfg = albert_exp.config.load_config(None, sys.argv[3:])
albert_exp.tune.enqueue_base(albert_exp.tune.open_study(cfg, "race"), cfg)
"""


def test_open_study_at_the_same_instant_on_a_fresh_storage(postgres, tmp_path):
    """The race itself, without the seconds a worker spends before it: four processes released together create
    or find Optuna's tables and the study and queue the base config, in three fresh databases: every one
    succeeds, one study, the base config queued once."""
    import optuna

    for i in range(3):
        storage = postgres.create_db(f"race{i}")
        where = tmp_path / f"round{i}"
        where.mkdir()
        args = [f"tune.storage={storage}", "finetune.learning_rate=0.0001", "tune.lr_min=1e-5", "tune.lr_max=1e-3"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = start_together([args] * 4, where, run="import albert_exp.config" + OPEN_STUDY, env=env)
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [o[-3000:] for o in outs]
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["race"]
        trials = optuna.load_study(study_name="race", storage=storage).trials
        assert [t.state.name for t in trials] == ["WAITING"], "the base config queued once"


@pytest.mark.parametrize("workers", [2, 4])
def test_tune_workers_started_together_share_one_study(postgres, tmp_path, workers):
    """Tune processes released at the same instant on a fresh PostgreSQL storage: they all join one study (no
    race creating its tables or the study), the trials add up to the study's budget, no trial number is taken
    twice, the base config is queued once, and every trial has exactly one MLflow run with its parameters."""
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    data = make_data(tmp_path / "w")
    storage, tracking = postgres.create_db(f"optuna{workers}"), postgres.create_db(f"mlflow{workers}")
    client = MlflowClient(tracking)  # creates the tables once, before the workers race to
    client.create_experiment("team-tune", artifact_location=str(tmp_path / "artifacts"))
    n_trials = 4
    overrides = " ".join(
        [
            *TINY,
            "name=team-tune",
            f"tune.n_trials={n_trials}",
            "tune.epochs_max=2",
            f"tune.storage={storage}",
            "tune.study_name=team",
            "finetune.learning_rate=0.001",  # inside the space: the base config is queued (once)
            "finetune.epochs=1",
            "jobs=1",  # one trial process each: the workers are the team's machines
        ]
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(ROOT)}
    cmds = [["tune", "--workdir", str(data), "--set", overrides, "--worker", str(w)] for w in range(workers)]
    procs = start_together(cmds, tmp_path, cwd=tmp_path, env=env)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, [o[-3000:] for o in outs]

    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["team"], "one study"
    study = optuna.load_study(study_name="team", storage=storage)
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    finished = states.count("COMPLETE") + states.count("PRUNED")
    # each worker stops once the study has n_trials finished; those already running finish too
    assert n_trials <= finished <= n_trials + workers - 1 and "FAIL" not in states and "RUNNING" not in states
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert sum("fixed_params" in t.system_attrs for t in trials) == 1, "the base config queued once"
    ran = {t.user_attrs["worker"] for t in trials}
    assert (ran == {0, 1}) if workers == 2 else (len(ran) >= 2), ran

    mlflow.set_tracking_uri(tracking)
    exp = client.get_experiment_by_name("team-tune")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    trial_runs = [
        r for r in runs if r.data.tags.get("optuna_study") == "team" and r.data.tags.get("stage") == "finetune"
    ]
    numbers = [int(r.data.tags["optuna_trial"]) for r in trial_runs]
    assert sorted(numbers) == sorted(t.number for t in trials), "one MLflow run per trial, none duplicated"
    for r in trial_runs:
        t = trials[int(r.data.tags["optuna_trial"])]
        assert float(r.data.params["finetune.learning_rate"]) == pytest.approx(t.params["learning_rate"])
        assert r.data.tags["mlflow.parentRunId"] == t.user_attrs["mlflow_parent_run_id"]
        assert r.info.status == "FINISHED" and (r.data.tags.get("pruned") == "true") == (t.state.name == "PRUNED")
    parents = [r for r in runs if r.data.tags.get("stage") == "tune"]
    assert len(parents) == workers and all(r.info.status == "FINISHED" for r in parents)
    assert {r.data.tags["optuna_worker"] for r in parents} == {str(w) for w in range(workers)}
    assert {r.data.tags["optuna_study"] for r in parents} == {"team"}


@pytest.mark.slow
def test_main_against_a_tracking_server_with_postgres(postgres, tmp_path):
    """Team mode: `mlflow server` (PostgreSQL backend store, proxied artifacts) on loopback; `main` logs every
    stage to it, the Optuna study lives in PostgreSQL too, and the champion loads back from the server."""
    import mlflow
    from mlflow.tracking import MlflowClient

    backend, storage = postgres.create_db("mlflow_server"), postgres.create_db("optuna_team")
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    mlflow_bin, env = mlflow_cli_env()
    cmd = [
        mlflow_bin,
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    uri = f"http://127.0.0.1:{port}"
    with http_process(cmd, f"{uri}/health", tmp_path, env, 180, "mlflow server"):
        try:
            work = tmp_path / "client"
            work.mkdir()
            small = [
                *TINY,
                "corpus.toy_documents=300",
                "corpus.toy_train_rows=300",
                "corpus.toy_val_rows=100",
                "corpus.toy_test_rows=100",
                "vocab.vocab_size=400",
                "finetune.epochs=2",
                "tune.n_trials=2",
                "tune.epochs_max=2",
                f"tune.storage={storage}",
                "promote.model_name=team-tagger",
            ]
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "albert_exp",
                    "main",
                    "--config",
                    str(ROOT / "experiments" / "toy.yaml"),
                    "--workdir",
                    str(work / "runs"),
                    "--set",
                    " ".join(small),
                ],
                cwd=work,
                env={**env, "MLFLOW_TRACKING_URI": uri},
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            assert "models:/team-tagger@champion" in out.stdout
            assert not (work / "mlruns").exists(), "artifacts must go through the server, not to a local folder"
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name("toy")
            runs = client.search_runs([exp.experiment_id], max_results=1000)
            assert runs and all(r.info.status in ("FINISHED", "KILLED") for r in runs)
            parent = next(r for r in runs if r.data.tags.get("stage") == "main")
            children = {
                r.data.tags["stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
            }
            assert {"corpus", "vocab", "finetune", "tune", "promote"} <= children
            champion = client.get_model_version_by_alias("team-tagger", "champion")
            assert champion.tags["promotion.decision"] == "promoted"
            assert any(artifacts.rglob("MLmodel")), "the server stored the logged models"
            mlflow.set_tracking_uri(uri)
            model = mlflow.pyfunc.load_model("models:/team-tagger@champion")
            import pandas as pd

            pred = model.predict(pd.DataFrame({"text": ["The waiter was lovely."]}))
            assert list(pred.columns) == ["phrases", "spans", "tokens"]
            results = json.loads((work / "runs" / "results.json").read_text())
            assert results["promote"]["champion_uri"] == "models:/team-tagger@champion"
        finally:
            mlflow.set_tracking_uri(None)


def test_two_processes_start_on_a_fresh_postgres_tracking_store(postgres, tmp_path):
    """MLflow creates its schema on first use; two processes doing it at once on an empty database must both
    succeed (tracking.store_client serialises the set-up with an advisory lock)."""
    from mlflow import MlflowClient

    uri = postgres.create_db("fresh_tracking")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "albert_exp", "corpus", "--set"]
    procs = [
        subprocess.Popen(
            [*cmd, f"corpus.toy=true corpus.toy_documents=20 workdir={tmp_path / f'w{i}'}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in (0, 1)
    ]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errors)
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]


def test_bulk_log_into_postgres_matches_log_batch(postgres, tmp_path, monkeypatch):
    """The bulk insert of RunRecord.log_points (tpu-logs) on PostgreSQL: the same points as `log_batch`."""
    import mlflow

    from tests.test_tracking import bulk_log_matches_log_batch

    uri = postgres.create_db("bulk")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        bulk_log_matches_log_batch(monkeypatch)
    finally:
        mlflow.set_tracking_uri(None)
