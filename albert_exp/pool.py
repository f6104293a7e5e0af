"""Tasks in spawned worker processes whose stage runs nest under one MLflow run (the curve's points).

    done = in_pool(run_point, {0: (point, run), 1: (...)}, 2, logs=Path("runs/x/logs"), prefix="curve",
                   parent_run_id=tracker.run_id)

Each worker is a fresh interpreter (spawn: no torch threads, CUDA state or active MLflow run inherited) that logs
to the same store, takes one GPU of those visible (when there are any) or its share of the cores, writes its
console output to `<logs>/<prefix>-worker-<k>.log` and dies with this process. A task's stage runs are children of
`parent_run_id` (the stage run takes its parent from ALBERT_EXP_PARENT_RUN_ID, as under `main --jobs`). A
failing task, Ctrl-C or SIGTERM stops the others: running tasks get SIGTERM (their runs end KILLED, their partial
outputs stay for a rerun to resume), queued ones never start.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from albert_exp.tracking import PARENT_RUN_ENV, tracking_uri


def in_pool(
    fn: Callable[..., Any],
    tasks: dict[Any, tuple],
    workers: int,
    *,
    logs: Path,
    prefix: str,
    parent_run_id: str | None,
    on_result: Callable[[Any, Any], None] | None = None,
) -> dict[Any, Any]:
    """{task id: fn(*args)} for every task, computed in `workers` processes (`fn` and its arguments must pickle:
    a module-level function, dataclasses); `on_result(task id, result)` as each one finishes."""
    import concurrent.futures as cf
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    slots = spawn.Queue()
    for k in range(workers):
        slots.put(k)
    logs.mkdir(parents=True, exist_ok=True)
    init = (tracking_uri(), str((logs / f"{prefix}-worker-").resolve()), slots, workers, os.getpid())
    out: dict[Any, Any] = {}
    pool = cf.ProcessPoolExecutor(workers, mp_context=spawn, initializer=_start_worker, initargs=init)
    try:
        futures = {pool.submit(_call, fn, args, parent_run_id): task for task, args in tasks.items()}
        for f in cf.as_completed(futures):
            out[futures[f]] = f.result()
            if on_result is not None:
                on_result(futures[f], out[futures[f]])
    except BaseException:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):  # the executor's own (no public API)
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return out


def _start_worker(uri: str, log_prefix: str, slots: Any, workers: int, parent_pid: int) -> None:
    """A worker's setup: the parent's tracking store, one GPU (when there are any) or its share of the cores, its
    own log, no progress bars."""
    from albert_exp.devices import share_cores, side_by_side_env
    from albert_exp.processes import die_with_parent

    die_with_parent(parent_pid)
    slot = slots.get()
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "TQDM_DISABLE": "1"})
    os.environ.pop("MLFLOW_RUN_ID", None)
    share_cores(workers)  # torch is imported already: its thread count is set (before the environment names one)
    os.environ.update(side_by_side_env(slot, workers))  # for the processes this worker starts
    fd = os.open(f"{log_prefix}{slot}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def _call(fn: Callable[..., Any], args: tuple, parent_run_id: str | None) -> Any:
    """In a worker: one task, its stage runs children of `parent_run_id` (a stage run takes the env's once)."""
    if parent_run_id:
        os.environ[PARENT_RUN_ENV] = parent_run_id
    try:
        return fn(*args)
    finally:
        os.environ.pop(PARENT_RUN_ENV, None)
