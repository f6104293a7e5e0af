"""Shared fixtures. Every test runs offline (HF_HUB_OFFLINE=1) against a throw-away SQLite MLflow store."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "fixtures" / "albert_reference"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_cli_env(**extra: str) -> tuple[str, dict[str, str]]:
    """The `mlflow` executable of this environment, and an env whose PATH finds its tools (`mlflow models serve`
    runs `uvicorn` from PATH)."""
    bin_dir = os.path.dirname(sys.executable)
    return os.path.join(bin_dir, "mlflow"), {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], **extra}


@contextlib.contextmanager
def http_process(cmd: list[str], ready_url: str, cwd: Path, env: dict[str, str], timeout_s: float, what: str):
    """Start cmd; wait until ready_url answers (failing with its stderr if it exits, or after timeout_s);
    terminate it afterwards."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
                assert time.time() < deadline, f"{what} did not come up"
                time.sleep(1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def served_model(model_uri: str, tracking_uri: str, cwd: Path, timeout_s: float):
    """`mlflow models serve` of model_uri on a free loopback port; yields the port once /ping answers."""
    port = free_port()
    mlflow_bin, env = mlflow_cli_env(MLFLOW_TRACKING_URI=tracking_uri)
    cmd = [
        mlflow_bin,
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with http_process(cmd, f"http://127.0.0.1:{port}/ping", cwd, env, timeout_s, "server"):
        yield port


def post_rows(port: int, rows: list[list]) -> tuple[int, dict]:
    """POST rows of a `text` column to a served model's /invocations; (HTTP status, JSON answer)."""
    import json
    import urllib.error

    body = json.dumps({"dataframe_split": {"columns": ["text"], "data": rows}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextlib.contextmanager
def tracking_in(tmp: Path):
    """For module-scoped fixtures (monkeypatch is per test): chdir to tmp and point MLflow tracking + registry at
    tmp/mlflow.db (artifacts in tmp/mlruns); restore the directory, the env and MLflow's URIs afterwards."""
    import mlflow

    old_cwd, old_env = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    old_registry = os.environ.get("MLFLOW_REGISTRY_URI")  # set_registry_uri exports it
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.chdir(tmp)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        if old_registry is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        else:
            os.environ["MLFLOW_REGISTRY_URI"] = old_registry


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite tracking + registry store and artifact root under tmp_path; returns the tracking URI."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # set_registry_uri exports MLFLOW_REGISTRY_URI: set through monkeypatch, so that it is gone after the test
    # (else every later subprocess registers its models in this test's store)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def require_reference():
    """google-research/albert's fixtures (../shared). Missing: a failure under CI=true (CI has them, so these
    compatibility tests must run there), else a skip that the end of the test run reports in capitals."""
    if not REFERENCE.is_dir():
        msg = f"../shared/fixtures/albert_reference not found at {REFERENCE}: google-compatibility test not run"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI is set: these tests must run in CI)", pytrace=False)
        pytest.skip(msg)
    return REFERENCE


def pytest_terminal_summary(terminalreporter):
    skipped = [
        r.nodeid or str(r.location[0])
        for r in terminalreporter.stats.get("skipped", [])
        if "google-compatibility test not run" in str(r.longrepr)
    ]
    if skipped:
        terminalreporter.write_sep(
            "!", "GOOGLE-COMPATIBILITY TESTS SKIPPED: ../shared/fixtures/albert_reference missing"
        )
        for name in skipped:
            terminalreporter.write_line(f"  not run: {name}")


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A real SentencePiece + AlbertTokenizer trained on a few generated reviews (seconds, offline)."""
    from albert_exp import toy
    from albert_exp.vocab import build_hf_tokenizer, normalize, train_sentencepiece

    d = tmp_path_factory.mktemp("tok")
    lines = [s for doc in toy.pretraining_documents(0, 300) for s in doc]
    lines += ["Spicy Lamb Dumplings", "café crème brûlée"]
    train_sentencepiece(
        [normalize(s, lowercase=True, keep_accents=False) for s in lines], d / "spiece", 300, "unigram", 1.0
    )
    return build_hf_tokenizer(d / "spiece.model", d / "tokenizer", lowercase=True, keep_accents=False)


@pytest.fixture(autouse=True)
def _tracking_uri_restored():
    """mlflow.set_tracking_uri() also sets MLFLOW_TRACKING_URI in os.environ (so subprocesses inherit it): a test
    that points MLflow at its own store (e.g. a PostgreSQL server it then stops) must not hand that store to the
    CLI subprocesses of later tests. Restored after every test, to what it was before it."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        mlflow.set_tracking_uri(before)  # sets or unsets the variable too


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_run_id():
    """MLFLOW_RUN_ID makes every later mlflow.start_run() attach to that run: a stage must never leave it set."""
    before = os.environ.get("MLFLOW_RUN_ID")
    yield
    assert os.environ.get("MLFLOW_RUN_ID") == before, "the test left MLFLOW_RUN_ID changed in os.environ"


def stage_runner(name: str):
    """`cfg -> results dict` of one declared stage, run by the executor as `albert-exp <name>` runs it."""
    from albert_exp.executor import run_stage

    return lambda cfg, **kw: run_stage(name, cfg, **kw).as_dict()
