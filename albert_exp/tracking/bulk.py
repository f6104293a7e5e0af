"""Runs back-filled from outside the process that trained (tpu-logs: console logs of a TPU job).

A `RunRecord` is an MlflowTracker that also logs points with their own timestamps, reads values back,
downloads its artifacts and ends itself; `RunStore` finds, gets and creates such runs in one experiment.
Many points go into a SQL store at once through `_bulk_log`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError
from albert_exp.tracking.store import create_experiment, store_client, tracking_uri
from albert_exp.tracking.trackers import MlflowTracker

_METRIC_COLUMNS = {"key", "value", "timestamp", "step", "is_nan", "run_uuid"}  # MLflow 3's metrics, latest_metrics


def _bulk_log(client: Any, run_id: str, points: list[tuple[str, float, int, int]]) -> bool:
    """Metric points (key, value, timestamp ms, step) into a SQL store in one transaction: one executemany into
    MLflow's `metrics` table and the run's `latest_metrics` rows moved on as MLflow's `log_batch` moves them (by
    step, then time, then value), through MLflow's own table definitions and session. `log_batch` costs ~80 us
    of ORM work per point (a 1M-line TPU log has 30,000: 2.5 s); this ~15 us (0.5 s). False, nothing written, for
    any other store, a table layout not known here, or a point the run already has (the caller then uses
    `log_batch`, which skips those). tests/test_tracking.py checks both ways leave the same history and latest
    values, tests/test_team.py on PostgreSQL too."""
    import math

    import sqlalchemy
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = client._tracking_client.store
    layout = ({c.name for c in t.__table__.columns} for t in (SqlMetric, SqlLatestMetric))
    if not points or not isinstance(store, SqlAlchemyStore) or any(cols != _METRIC_COLUMNS for cols in layout):
        return False
    rows: dict[tuple, None] = {}  # (key, timestamp, step, value, is_nan) as stored; identical points once
    for key, value, timestamp, step in points:
        is_nan, value = store.sanitize_metric_value(value) if not math.isfinite(value) else (False, value)
        rows[key, timestamp, step, value, is_nan] = None
    newest: dict[str, tuple] = {}  # per key, the point latest_metrics should hold: (step, timestamp, value, is_nan)
    for key, timestamp, step, value, is_nan in rows:
        if (step, timestamp, value) > newest.get(key, (-math.inf,)):
            newest[key] = (step, timestamp, value, is_nan)
    columns = ("key", "timestamp", "step", "value", "is_nan")
    try:
        with store.ManagedSessionMaker(read_only=False) as session:
            values = [{"run_uuid": run_id, **dict(zip(columns, row, strict=True))} for row in rows]
            session.connection().execute(SqlMetric.__table__.insert(), values)  # one executemany
            latest = session.query(SqlLatestMetric).filter(
                SqlLatestMetric.run_uuid == run_id, SqlLatestMetric.key.in_(sorted(newest))
            )
            have = {m.key: m for m in latest.order_by(SqlLatestMetric.key).with_for_update()}
            for key, (step, timestamp, value, is_nan) in newest.items():
                old = have.get(key)
                if old is None:
                    session.add(
                        SqlLatestMetric(
                            run_uuid=run_id, key=key, step=step, timestamp=timestamp, value=value, is_nan=is_nan
                        )
                    )
                elif (step, timestamp, value) > (old.step, old.timestamp, old.value):
                    old.step, old.timestamp, old.value, old.is_nan = step, timestamp, value, is_nan
    except MlflowException as e:  # its session wraps SQLAlchemy's errors (and rolls back)
        if isinstance(e.__cause__, sqlalchemy.exc.IntegrityError):  # a point the run has
            return False
        raise
    return True


class RunRecord(MlflowTracker):
    """One run, bound to its id. Points go in with `log_batch`, 1,000 per request (MLflow's limit); into a SQL
    store (sqlite, PostgreSQL) many points go in one bulk insert (`_bulk_log`)."""

    MAX_METRICS = 1000

    def __init__(self, run: Any) -> None:
        super().__init__(run.info.run_id, run.info.experiment_id)
        self.status, self.tags, self.params = run.info.status, dict(run.data.tags), dict(run.data.params)
        self.metric_keys = sorted(run.data.metrics)

    def log_points(self, keys: Any, values: Any, timestamps_ms: Any, steps: Any) -> int:
        """Metric points with their own times (columns of equal length); returns how many were logged."""
        from mlflow.entities import Metric

        points = [(k, float(v), int(t), int(s)) for k, v, t, s in zip(keys, values, timestamps_ms, steps, strict=True)]
        todo = points
        if len(points) > self.MAX_METRICS:
            # MLflow itself checks the run and each key's name on the first point of each key ...
            first: dict[str, int] = {}
            for i, point in enumerate(points):
                first.setdefault(point[0], i)
            self._client.log_batch(self.run_id, metrics=[Metric(*points[i]) for i in first.values()])
            skip = set(first.values())
            todo = [p for i, p in enumerate(points) if i not in skip]
            if _bulk_log(self._client, self.run_id, todo):  # ... and the rest go in at once
                return len(points)
        metrics = [Metric(*p) for p in todo]  # not a SQL store, or a point the run already has
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
