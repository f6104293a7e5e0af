"""The tracking boundary: the only package of the stages that talks to MLflow. Import from here.

    store.py     which store, and a client of it whose tables exist (`store_client`, `tracking_uri`)
    trackers.py  the `Tracker` protocol stages log through, bound to one run id; `MlflowTracker` (an MLflow
                 run), `FakeTracker` (in memory: unit tests, non-zero ranks, offline), `SkipLogged`
    runs.py      the run lifecycle: `stage_run` (open, tag, log the config, end FINISHED/FAILED/KILLED),
                 `offline`, `run_tags`, the dead-run sweep, `write_results`, reading runs back (`get_run`)
    registry.py  the model registry (`Registry`) and reading models and artifacts by URI
    bulk.py      runs back-filled from outside (tpu-logs): `RunStore`, `RunRecord`, the bulk metric insert

Layers: store <- trackers <- runs, registry, bulk; the package imports nothing of albert_exp above the floor
(config, errors, files, digest, outputs, extras).
"""

from albert_exp.tracking.bulk import RunRecord, RunStore
from albert_exp.tracking.registry import Registry, download_artifacts, has_model
from albert_exp.tracking.runs import (
    HOST,
    KEY,
    KILLED_REASON,
    PARENT,
    PARENT_RUN_ENV,
    PID,
    PID_START,
    RESUMED_AFTER,
    REUSED,
    RUN_FILE,
    UPSTREAM,
    RunView,
    close_runs,
    current_run_id,
    finished_run,
    get_run,
    git_commit,
    offline,
    owner_alive,
    process_alive,
    rename_run,
    run_tags,
    run_url,
    set_experiment_tags,
    signals_as_interrupt,
    stage_run,
    sweep_dead_runs,
    upstream_tags,
    who,
    write_results,
)
from albert_exp.tracking.store import store_client, tracking_uri
from albert_exp.tracking.trackers import FakeTracker, MlflowTracker, SkipLogged, Tracker

__all__ = [
    "HOST",
    "KEY",
    "KILLED_REASON",
    "PARENT",
    "PARENT_RUN_ENV",
    "PID",
    "PID_START",
    "RESUMED_AFTER",
    "REUSED",
    "RUN_FILE",
    "UPSTREAM",
    "FakeTracker",
    "MlflowTracker",
    "Registry",
    "RunRecord",
    "RunStore",
    "RunView",
    "SkipLogged",
    "Tracker",
    "close_runs",
    "current_run_id",
    "download_artifacts",
    "finished_run",
    "get_run",
    "git_commit",
    "has_model",
    "offline",
    "owner_alive",
    "process_alive",
    "rename_run",
    "run_tags",
    "run_url",
    "set_experiment_tags",
    "signals_as_interrupt",
    "stage_run",
    "store_client",
    "sweep_dead_runs",
    "tracking_uri",
    "upstream_tags",
    "who",
    "write_results",
]
