"""The bulk insert of tpu-logs (albert_exp/tracking/bulk.py) degrades safely: MLflow's private API broken in
any way (an import, an attribute, a table layout, a failure after the insert) leaves nothing half-written and
the same points go in through `log_batch`; ALBERT_EXP_BULK_LOG=0 turns it off; an MLflow outside the tested
range turns it off with one line."""

from __future__ import annotations

import math
import random
import sys

import pytest

from albert_exp.tracking import RunStore, bulk
from tests.conftest import tracking_in

KEYS = ("pretrain/loss", "pretrain/sop_loss", "examples_per_sec")


def columns() -> list[list]:
    """Points of three keys, more than one log_batch request holds, with NaN and +-inf among them."""
    rng = random.Random(1)
    points = [
        (KEYS[i % 3], math.nan if i % 101 == 0 else math.inf if i % 211 == 0 else rng.random(), 5_000 + i, i // 3)
        for i in range(2_400)
    ]
    return [list(c) for c in zip(*points, strict=True)]


def seen(run_id: str) -> tuple[dict, dict]:
    """What the store holds for the run: every key's history and its latest values (NaN as a string)."""
    from mlflow import MlflowClient

    client = MlflowClient()

    def show(v: float) -> str:
        return "nan" if math.isnan(v) else repr(v)

    history = {
        k: sorted((m.step, m.timestamp, show(m.value)) for m in client.get_metric_history(run_id, k)) for k in KEYS
    }
    return history, {k: show(v) for k, v in client.get_run(run_id).data.metrics.items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (each test logs into runs of its own) and the points as the fast path
    logs them (checked to have taken it): the reference every other way must match."""
    with tracking_in(tmp_path_factory.mktemp("bulk")):
        runs = RunStore("bulk-safety")
        run = runs.create("fast", None, {})
        assert bulk.bulk_enabled() and bulk._bulk_log(run._client, run.run_id, list(zip(*columns(), strict=True)))
        runs.reference = seen(run.run_id)
        assert len(runs.reference[0][KEYS[0]]) == 800 and runs.reference[1][KEYS[0]] != "nan"
        yield runs


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """The fast path on, not yet said anything, its version check fresh."""
    monkeypatch.delenv(bulk.BULK_ENV, raising=False)
    monkeypatch.setattr(bulk, "_told", set())
    bulk._untested_mlflow.cache_clear()
    yield
    bulk._untested_mlflow.cache_clear()


@pytest.fixture
def tries(monkeypatch) -> list[bool]:
    """What each call of the fast path returns (True: it wrote the points)."""
    out: list[bool] = []
    real = bulk._bulk_log
    monkeypatch.setattr(bulk, "_bulk_log", lambda *a: out.append(real(*a)) or out[-1])
    return out


def boom(*args, **kwargs):
    raise RuntimeError("MLflow changed")


class Renamed:
    """An MlflowClient of a release that renamed the private attribute the fast path reaches its store by."""

    def __init__(self, client) -> None:
        self._client = client

    def __getattr__(self, name: str):
        if name == "_tracking_client":
            raise AttributeError(name)
        return getattr(self._client, name)


def _break(how: str, monkeypatch, run) -> None:
    if how == "import":  # a module MLflow moved
        monkeypatch.setitem(sys.modules, "mlflow.store.tracking.dbmodels.models", None)
    elif how == "attribute":
        run._client = Renamed(run._client)
    elif how == "schema":  # a column MLflow added to its metrics tables
        monkeypatch.setattr(bulk, "_METRIC_COLUMNS", bulk._METRIC_COLUMNS - {"is_nan"})
    elif how == "after the insert":  # the metrics rows are in, then the latest_metrics update fails
        monkeypatch.setattr(bulk, "_move_latest", boom)


BREAKS = ("import", "attribute", "schema", "after the insert")


@pytest.mark.parametrize("how", BREAKS)
def test_a_broken_fast_path_writes_nothing_and_log_batch_logs_the_same_points(how, store, tries, monkeypatch, capfd):
    run = store.create(f"broken {how}", None, {})
    _break(how, monkeypatch, run)
    assert bulk._bulk_log(run._client, run.run_id, list(zip(*columns(), strict=True))) is False
    assert seen(run.run_id) == ({k: [] for k in KEYS}, {})  # rolled back: not one point, no latest value
    assert run.log_points(*columns()) == 2_400
    run.log_points(*columns())  # again: still one line, and log_batch skips the points the run has
    assert tries == [False, False, False]
    assert seen(run.run_id) == store.reference
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and "log_batch" in lines[0] and "bulk insert failed" in lines[0]


def test_points_the_run_has_go_through_log_batch_silently(store, tries, capfd):
    run = store.create("twice", None, {})
    run.log_points(*columns())
    run.log_points(*columns())  # a rerun of the same log: a primary-key clash, rolled back
    assert tries == [True, False]
    assert seen(run.run_id) == store.reference and capfd.readouterr().err == ""


def test_a_deleted_run_refuses_points_as_log_batch_does(store, tries, capfd):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run = store.create("deleted", None, {})
    MlflowClient().delete_run(run.run_id)
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        run.log_points(*columns())
    assert tries == [False] and capfd.readouterr().err == ""


def test_the_environment_switch_turns_the_fast_path_off(store, tries, monkeypatch, capfd):
    for value in ("0", "false", "off"):
        monkeypatch.setenv(bulk.BULK_ENV, value)
        run = store.create(f"switched off: {value}", None, {})
        run.log_points(*columns())
        assert tries == [] and seen(run.run_id) == store.reference
    monkeypatch.setenv(bulk.BULK_ENV, "1")
    assert bulk.bulk_enabled() and capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "version, tested",
    [("3.17.5.dev0", True), ("3.16.9", False), ("3.18.0rc1", False), ("4.0.0", False)],
)  # fmt: skip
def test_the_fast_path_runs_only_on_the_tested_mlflow_releases(version, tested, store, tries, monkeypatch, capfd):
    monkeypatch.setattr(bulk, "_mlflow_version", lambda: version)
    run = store.create(f"mlflow {version}", None, {})
    run.log_points(*columns())
    run.log_points(*columns())
    err = capfd.readouterr().err.splitlines()
    if tested:
        assert tries == [True, False] and err == [] and seen(run.run_id) == store.reference
    else:
        assert seen(run.run_id) == store.reference
        assert tries == [] and len(err) == 1 and f"tested with MLflow >=3.17,<3.18, this is {version}" in err[0]
