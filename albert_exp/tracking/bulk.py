"""Runs back-filled from outside the process that trained (tpu-logs: console logs of a TPU job).

A `RunRecord` is an MlflowTracker that also logs points with their own timestamps, reads values back,
downloads its artifacts and ends itself; `RunStore` finds, gets and creates such runs in one experiment.
Many points go into a SQL store at once through `_bulk_log`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError
from albert_exp.tracking.store import create_experiment, store_client, tracking_uri
from albert_exp.tracking.trackers import MlflowTracker

BULK_ENV = "ALBERT_EXP_BULK_LOG"  # "0" (or false/no/off): every metric point goes through MLflow's log_batch
# The MLflow releases the bulk insert was checked against (its tables, session and checks are MLflow's private
# API): [TESTED_FROM, TESTED_BELOW) by (major, minor). Outside it log_batch takes every point.
TESTED_FROM, TESTED_BELOW = (3, 17), (3, 18)
_METRIC_COLUMNS = {"key", "value", "timestamp", "step", "is_nan", "run_uuid"}  # MLflow 3's metrics, latest_metrics
_told: set[str] = set()  # what this process has said about the fast path (one line at most)


class _NotSql(Exception):
    """The store is not a SQL database (a tracking server, say): log_batch is the way, nothing to report."""


class _Refused(Exception):
    """A point log_batch refuses too (it raises MLflow's own error for it)."""


def _say_once(why: str) -> None:
    if not _told:
        print(f"albert-exp: metric points go through MLflow's log_batch (slower): {why}", file=sys.stderr)
    _told.add(why)


def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


@functools.cache
def _untested_mlflow() -> str | None:
    """Why the installed MLflow is outside the tested range (None: inside)."""
    try:
        installed = _mlflow_version()
        release = tuple(int(p) for p in re.findall(r"\d+", installed)[:2])
    except Exception as e:  # no metadata, an odd version string
        return f"MLflow's version is unknown ({type(e).__name__})"
    if TESTED_FROM <= release < TESTED_BELOW:
        return None
    tested = ".".join(map(str, TESTED_FROM)), ".".join(map(str, TESTED_BELOW))
    return f"the bulk insert was tested with MLflow >={tested[0]},<{tested[1]}, this is {installed}"


def bulk_enabled() -> bool:
    """Whether `_bulk_log` may be tried: not switched off by ALBERT_EXP_BULK_LOG=0, and a tested MLflow."""
    if os.environ.get(BULK_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    why = _untested_mlflow()
    if why:
        _say_once(why)
    return why is None


def _bulk_log(client: Any, run_id: str, points: list[tuple[str, float, int, int]]) -> bool:
    """Metric points (key, value, timestamp ms, step) into a SQL store in one transaction: MLflow's checks (the
    run is active, each key's name, a first point per key, timestamps not negative), one executemany into its
    `metrics` table and the run's `latest_metrics` rows moved on as `log_batch` moves them (by step, then time,
    then value), through MLflow's own table definitions and session. `log_batch` costs ~80 us of ORM work per
    point (a 1M-line TPU log has 30,000: 2.5 s); this ~15 us (0.5 s).

    This is MLflow's private API, so any failure of it (an import, an attribute, a table layout not known here,
    a point the run already has, a check) rolls the transaction back and returns False, nothing written: the
    caller then logs the same points with `log_batch` (which skips points the run has, and raises MLflow's own
    error where a check fails). Any other store returns False too. tests/test_tracking_bulk.py breaks it in
    several ways and compares with `log_batch`; tests/test_team.py runs it on PostgreSQL."""
    if not points:
        return True
    try:
        _insert(client, run_id, points)
    except _NotSql:
        return False
    except Exception as e:
        try:
            news = not _expected(e)
        except Exception:  # (it imports MLflow too)
            news = True
        if news:
            _say_once(f"the bulk insert failed ({type(e).__name__}: {str(e)[:200]})")
        return False
    return True


def _expected(e: BaseException | None) -> bool:
    """A failure log_batch handles as well: a point the run has (a primary-key clash, raw or wrapped by MLflow's
    session: log_batch skips it), or one of MLflow's checks (an inactive or missing run, a bad key: log_batch
    raises the same error). Anything else is news about the fast path."""
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    checks = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
    if isinstance(e, _Refused) or (isinstance(e, MlflowException) and e.error_code in checks):
        return True
    while e is not None:
        if isinstance(e, sqlalchemy.exc.IntegrityError):
            return True
        e = e.__cause__ or e.__context__
    return False


def _insert(client: Any, run_id: str, points: list[tuple[str, float, int, int]]) -> None:
    import math

    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils.validation import _validate_metric

    store = client._tracking_client.store
    if not isinstance(store, SqlAlchemyStore):
        raise _NotSql
    for table in (SqlMetric, SqlLatestMetric):
        if {c.name for c in table.__table__.columns} != _METRIC_COLUMNS:
            raise RuntimeError(f"MLflow's {table.__tablename__} table has columns this code does not know")
    rows: dict[tuple, None] = {}  # (key, timestamp, step, value, is_nan) as stored; identical points once
    for key, value, timestamp, step in points:
        is_nan, value = store.sanitize_metric_value(value) if not math.isfinite(value) else (False, value)
        rows[key, timestamp, step, value, is_nan] = None
    newest: dict[str, tuple] = {}  # per key, the point latest_metrics should hold: (step, timestamp, value, is_nan)
    for key, timestamp, step, value, is_nan in rows:
        if key not in newest:  # what log_batch checks per point: the name, once per key; values are floats here
            _validate_metric(key, value, timestamp, step)
        if (step, timestamp, value) > newest.get(key, (-math.inf,)):
            newest[key] = (step, timestamp, value, is_nan)
    if min(row[1] for row in rows) < 0:
        raise _Refused("a negative timestamp")
    columns = ("key", "timestamp", "step", "value", "is_nan")
    with store.ManagedSessionMaker(read_only=False) as session:
        try:  # one transaction: committed as a whole when the block ends, else nothing of it stays
            store._check_run_is_active(store._get_run(session=session, run_uuid=run_id))
            values = [{"run_uuid": run_id, **dict(zip(columns, row, strict=True))} for row in rows]
            session.connection().execute(SqlMetric.__table__.insert(), values)  # one executemany
            _move_latest(session, SqlLatestMetric, run_id, newest)
        except BaseException:
            session.rollback()  # (MLflow's session rolls back too; this also covers Ctrl-C)
            raise


def _move_latest(session: Any, table: Any, run_id: str, newest: dict[str, tuple]) -> None:
    """The run's latest_metrics rows for the keys of `newest`, moved on where the new point is later."""
    latest = session.query(table).filter(table.run_uuid == run_id, table.key.in_(sorted(newest)))
    have = {m.key: m for m in latest.order_by(table.key).with_for_update()}
    for key, (step, timestamp, value, is_nan) in newest.items():
        old = have.get(key)
        if old is None:
            session.add(table(run_uuid=run_id, key=key, step=step, timestamp=timestamp, value=value, is_nan=is_nan))
        elif (step, timestamp, value) > (old.step, old.timestamp, old.value):
            old.step, old.timestamp, old.value, old.is_nan = step, timestamp, value, is_nan


class RunRecord(MlflowTracker):
    """One run, bound to its id. Points go in with `log_batch`, 1,000 per request (MLflow's limit); into a SQL
    store (sqlite, PostgreSQL) many points go in one bulk insert (`_bulk_log`), falling back to `log_batch`."""

    MAX_METRICS = 1000

    def __init__(self, run: Any) -> None:
        super().__init__(run.info.run_id, run.info.experiment_id)
        self.status, self.tags, self.params = run.info.status, dict(run.data.tags), dict(run.data.params)
        self.metric_keys = sorted(run.data.metrics)

    def log_points(self, keys: Any, values: Any, timestamps_ms: Any, steps: Any) -> int:
        """Metric points with their own times (columns of equal length); returns how many were logged."""
        from mlflow.entities import Metric

        points = [(k, float(v), int(t), int(s)) for k, v, t, s in zip(keys, values, timestamps_ms, steps, strict=True)]
        if len(points) > self.MAX_METRICS and bulk_enabled() and _bulk_log(self._client, self.run_id, points):
            return len(points)
        metrics = [Metric(*p) for p in points]  # few points, not a SQL store, or the fast path failed: all of them
        for i in range(0, len(metrics), self.MAX_METRICS):
            self._client.log_batch(self.run_id, metrics=metrics[i : i + self.MAX_METRICS])
        return len(points)

    def log_params(self, params: dict[str, Any]) -> dict[str, tuple[str, str]]:
        """Params are immutable: logs the new ones; returns {key: (the run's value, the new one)} that differ."""
        values = {k: str(v)[:6000] for k, v in params.items()}
        differ = {k: (self.params[k], v) for k, v in values.items() if k in self.params and self.params[k] != v}
        new = {k: v for k, v in values.items() if k not in self.params}
        if new:
            super().log_params(new)
            self.params.update(new)
        return differ

    def set_tags(self, tags: dict[str, Any]) -> None:
        tags = {k: str(v)[:8000] for k, v in tags.items() if v is not None}
        super().set_tags(tags)
        self.tags.update(tags)

    def history(self, keys: list[str] | None = None) -> dict[tuple[str, int], float]:
        """What the run holds: {(metric, step): value} (the first value where a step has several)."""
        out: dict[tuple[str, int], float] = {}
        for key in self.metric_keys if keys is None else keys:
            for m in self._client.get_metric_history(self.run_id, key):
                out.setdefault((key, m.step), m.value)
        return out

    def download(self, artifact: str, dst: str | Path) -> Path | None:
        """An artifact of the run into dst; None when the run has none of that name."""
        try:
            return Path(self._client.download_artifacts(self.run_id, artifact, str(dst)))
        except Exception:  # MLflow raises several types for a missing artifact
            return None

    def terminate(self, status: str, end_ms: int | None = None) -> None:
        self._client.set_terminated(self.run_id, status, end_time=end_ms)
        self.status = status

    @contextlib.contextmanager
    def ended_on_error(self) -> Iterator[None]:
        """An exception inside ends the run FAILED, Ctrl-C or SIGTERM KILLED: never left RUNNING."""
        try:
            yield
        except KeyboardInterrupt:
            self.terminate("KILLED")
            raise
        except BaseException:
            self.terminate("FAILED")
            raise


class RunStore:
    """The runs of one experiment (created when missing): find by tags, get by id, create."""

    def __init__(self, experiment: str) -> None:
        self._client = store_client()
        exp = self._client.get_experiment_by_name(experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise UserError(
                f"experiment {experiment!r} is deleted",
                fix="restore it (mlflow experiments restore) or pick another --experiment",
            )
        self.experiment_id = exp.experiment_id if exp else create_experiment(self._client, experiment)

    def find(self, tags: dict[str, str], run_name: str | None = None) -> RunRecord | None:
        """The latest run carrying all `tags` (and named run_name if given)."""
        filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        if run_name:
            filt += " and attributes.run_name = '{}'".format(run_name.replace("'", "\\'"))
        runs = self._client.search_runs(
            [self.experiment_id], filter_string=filt, order_by=["attributes.start_time DESC"], max_results=1
        )
        return RunRecord(runs[0]) if runs else None

    def get(self, run_id: str, where: str = "--run-id") -> RunRecord:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            raise UserError(
                f"no MLflow run {run_id!r} in {tracking_uri()}",
                where=where,
                fix="copy the run id from the MLflow UI or from results.json",
            )
        return RunRecord(run)

    def create(self, run_name: str, start_ms: int | None, tags: dict[str, str]) -> RunRecord:
        return RunRecord(self._client.create_run(self.experiment_id, start_time=start_ms, run_name=run_name, tags=tags))
