"""The store: which MLflow store this process talks to, and a client of it whose tables exist (the bottom of
the package: trackers, runs, registry and bulk writes all take their client from here)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


_READY: set[str] = set()  # stores this process has initialised
_LOCK_KEY = 0x616C62657274  # PostgreSQL advisory lock id ("albert") for the schema set-up
OPTUNA_LOCK_KEY = 0x616C6F707475  # ("aloptu") for an Optuna storage's: a database may hold both schemas


def store_client() -> Any:
    """An MlflowClient of the current store, whose tables exist. MLflow creates (or migrates) the schema on a
    process's first call; two processes doing that at once on a fresh store crash (sqlite: SQLAlchemy's
    CircularDependencyError; PostgreSQL: duplicate tables). So the first call runs under a lock: a file lock
    beside a sqlite database, an advisory lock in PostgreSQL (held across machines)."""
    from mlflow import MlflowClient

    uri = tracking_uri()
    if uri not in _READY:
        if uri.startswith("postgresql"):
            from albert_exp.extras import require

            require("postgres", "a PostgreSQL tracking store (MLFLOW_TRACKING_URI)")
        with schema_lock(uri):
            MlflowClient().search_experiments(max_results=1)
        _READY.add(uri)
    return MlflowClient()


@contextlib.contextmanager
def schema_lock(uri: str, key: int = _LOCK_KEY) -> Iterator[None]:
    """Held while a process creates or checks a database schema (MLflow's, or with `key=OPTUNA_LOCK_KEY` an
    Optuna storage's): a file lock beside a sqlite database, an advisory lock in PostgreSQL (across machines);
    nothing for other URLs."""
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        import fcntl

        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        return
    if uri.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
        return
    yield  # a tracking server (http) sets up its own store


def missing_sqlite_store() -> str | None:
    """The sqlite file the tracking or registry URI names, when it does not exist: opening it would create an
    empty store, so a command that only reads one (predict) stops first. None when the store is there (or is
    not a sqlite file)."""
    import mlflow

    for uri in (mlflow.get_tracking_uri(), mlflow.get_registry_uri()):
        if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
            path = Path(uri.removeprefix("sqlite:///"))
            if not path.is_file():
                return str(path.absolute())
    return None


def create_experiment(client: Any, name: str) -> str:
    """The id of a new experiment `name` (or of the one a process started at the same time created)."""
    from mlflow.exceptions import MlflowException

    try:  # marked as model training: MLflow 3 would open it in its GenAI view
        return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:  # created meanwhile by a process started at the same time
        return client.get_experiment_by_name(name).experiment_id
