"""Parsed TPU logs -> one MLflow run, back-filled with the log's own steps and times.

    albert-exp tpu-logs ingest pretrain-*.log --experiment tpu-recipe --run-name "tpu base-v2 b512"
    albert-exp tpu-logs ingest pretrain-3.log --append          # add a restart's log to the latest run
    albert-exp tpu-logs ingest pretrain-3.log --follow          # see follow.py

Identity (runs.py): the same files with the same options find their run and nothing changes; a run whose
earlier ingest died half-way (`tpu_logs.complete` not true) is completed: only the points it lacks are
logged. `--append` adds files the run does not have yet.

Overlaps: a step logged by several attempts keeps the latest attempt's value (tables.OVERLAP_RULE: a restart
re-runs the steps after its checkpoint), whichever way the files came in; the superseded values are counted in
the summary and listed in `overlaps.csv`. Where the run already holds the earlier value (--append, --follow:
MLflow cannot rewrite a point) the later one is logged after it at the same step, where it is the step's latest
value, and the run is tagged `tpu_logs.overlap`. Run start/end times and the status (FINISHED when the log shows
the end of training, else KILLED) come from the log; the headline figures are metrics too (`tpu/*`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError
from albert_exp.tpu_logs.runs import (
    ARTIFACT_DIR,
    DEFAULT_EXPERIMENT,
    STAGE,
    TAG_COMPLETE,
    TAG_DIGEST,
    TAG_FILES,
    LogFile,
    Plan,
    epoch_ms,
    log_files,
    merge_earlier,
    plan,
    run_digest,
    run_files,
    to_ms,
)
from albert_exp.tpu_logs.tables import OVERLAP_TAG, write_tables

# Summary figures logged as metrics (at the last step), so that they are columns of the runs table.
SUMMARY_METRICS = {
    "best_loss": "tpu/best_loss",
    "last_loss": "tpu/last_loss",
    "last_step": "tpu/last_step",
    "tpu_hours": "tpu/tpu_hours",
    "examples_per_s_median": "tpu/examples_per_s",
    "global_step_per_s_median": "tpu/global_step_per_s",
    "estimated_hours_to_finish": "tpu/hours_to_finish",
}


# ---------------------------------------------------------------------------------------------------------
# The stage


def ingest(
    paths: list[str],
    *,
    experiment: str | None = None,
    run_name: str | None = None,
    year: int | None = None,
    timezone: str = "UTC",
    command_file: str | None = None,
    append: bool = False,
    run_id: str | None = None,
    out_dir: str | None = None,
    progress: bool = True,
    background: bool | None = None,
) -> dict[str, Any]:
    """Parse `paths` and make sure one MLflow run holds them. Returns the results (also results.json).

    background: parse in a separate process while MLflow loads (None: when it can be forked, else for logs of
    16 MB or more); that process then writes the tables and the plot while this one logs the points.
    """
    from albert_exp.tracking import signals_as_interrupt

    if not paths:
        raise UserError("no log files given", fix="albert-exp tpu-logs ingest LOG [LOG...]")
    files = log_files(paths)
    flags = read_command_file(command_file) if command_file else {}
    opts = dict(append=append, run_id=run_id, run_name=run_name, year=year, timezone=timezone)
    out = Path(out_dir or default_out(run_digest([f.short for f in files], year, timezone)))
    # SIGTERM from here on is a KeyboardInterrupt, so that the `finally` ends and reaps the parsing process
    with signals_as_interrupt():
        bg = _background(files, opts, background, progress, out)  # its tables go where a new run's go
        try:
            store, todo, result, timings = _plan_and_parse(experiment, files, opts, bg, progress)
            if todo.unchanged:
                return _unchanged(todo.run, todo.unchanged)
            require_loss(result, [f.path for f in todo.files])
            run = todo.run or store.create(
                run_name or f"{STAGE} {Path(files[0].path).name.split('.')[0]}",
                epoch_ms(result.start_time),
                {"stage": STAGE, TAG_COMPLETE: "false"},
            )
            identity = run_digest(todo.digests, year, timezone)
            with run.ended_on_error():
                out = Path(out_dir or default_out(identity))
                return _into_run(run, todo, result, flags, identity, out, bg, timings, progress)
        finally:
            if bg is not None:
                bg.cancel()  # done, "unchanged", an error or a signal: nothing waits for the process any more


def default_out(identity: str) -> Path:
    return Path("runs") / "tpu_logs" / identity[:12]


def _into_run(
    run: Any, todo: Plan, result: Any, flags: dict, identity: str, out: Path, bg: Any, timings: dict, progress: bool
) -> dict[str, Any]:
    """Params, tags and the points the run lacks, then the wrap-up (the tables from `bg` if it wrote them)."""
    # findable by digest at once, so that a crash half-way is completed by a re-run
    start_tags = {} if todo.earlier else {TAG_DIGEST: identity, TAG_FILES: ",".join(todo.digests)}
    warnings = begin(run, result, flags, start_tags)
    if todo.earlier is not None:
        merge_earlier(result, todo.earlier)
    have = run_values(run)
    already = len(have)
    clock = time.perf_counter()
    logged = log_new_points(run, result, have, progress)
    timings["log_metrics_s"] = round(time.perf_counter() - clock, 2)
    return wrap_up(
        run,
        result,
        identity=identity,
        digests=todo.digests,
        files=run_files(todo.digests, todo.earlier, todo.files)[1],
        status="FINISHED" if result.finished else "KILLED",
        out=out,
        extra={"points_logged": logged, "points_already_in_run": already, "warnings": warnings},
        results={"status": "ingested", "timings": timings},
        tables=bg.tables if bg is not None and not already else None,  # else the table changed here
    )


def _background(files: list[LogFile], opts: dict, background: bool | None, progress: bool, out: Path) -> Any:
    """A BackgroundParse where it can be forked, or for big logs, except for --append, whose files are known once
    MLflow answers."""
    from albert_exp.tpu_logs.parse import BACKGROUND_MIN_BYTES, BackgroundParse, can_fork

    if background is None:
        background = can_fork() or sum(f.bytes for f in files) >= BACKGROUND_MIN_BYTES
    if not background or opts["append"] or opts["run_id"]:
        return None
    kwargs = dict(year=opts["year"], timezone=opts["timezone"], progress=progress)
    return BackgroundParse([f.path for f in files], tables_dir=out, **kwargs)


def _plan_and_parse(
    experiment: str | None, files: list[LogFile], opts: dict, bg: Any, progress: bool
) -> tuple[Any, Plan, Any, dict]:
    """Which run and which files (MLflow), and the parsed files (from `bg` when parsing in the background)."""
    from albert_exp.tpu_logs.parse import parse_files
    from albert_exp.tracking import RunStore

    store = RunStore(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    todo = plan(store, files, **opts)
    if todo.unchanged:
        return store, todo, None, {}
    clock = time.perf_counter()
    if bg is not None:
        result = bg.result()
        wait = round(time.perf_counter() - clock, 2)  # it ran alongside
        return store, todo, result, {"parse_wait_s": wait, "parse_process": bg.method}
    year, timezone = opts["year"], opts["timezone"]
    result = parse_files([f.path for f in todo.files], year=year, timezone=timezone, progress=progress)
    return store, todo, result, {"parse_s": round(time.perf_counter() - clock, 2)}


def require_loss(result: Any, paths: list[str]) -> None:
    if result.table.empty or not (result.table["metric"] == "train/loss").any():
        counts = result.counts
        raise UserError(
            f"no `loss = ..., step = ...` lines in {counts.get('lines', 0)} lines "
            f"({counts.get('unknown format', 0)} of unknown format)",
            where=", ".join(paths),
            fix="give the console output of run_pretraining.py (`2>&1 | tee LOG` keeps stderr)",
        )


def begin(run: Any, result: Any, flags: dict[str, str], tags: dict[str, str]) -> list[str]:
    """Stage tags and params on a run about to receive points; returns warnings (params that differ)."""
    from albert_exp.tpu_logs.summary import run_params
    from albert_exp.tracking import git_commit

    params, warnings = run_params(result, flags)
    run.set_tags({"stage": STAGE, "git_commit": git_commit(), TAG_COMPLETE: "false", **tags})
    differ = run.log_params(params)
    return warnings + [
        f"param {k}: the run has {a!r}, the new log says {b!r}; kept the run's" for k, (a, b) in differ.items()
    ]


def run_values(run: Any) -> dict[tuple[str, int], set[float]]:
    """Every value the run holds per (metric, step): one, or several where a later attempt's value was logged
    after an earlier one's."""
    from albert_exp.tracking import store_client

    if not run.metric_keys:
        return {}
    client, out = store_client(), {}
    for key in run.metric_keys:
        for m in client.get_metric_history(run.run_id, key):
            out.setdefault((key, m.step), set()).add(m.value)
    return out


def _holds(values: set[float] | None, value: float) -> bool:
    return values is not None and (value in values or (value != value and any(v != v for v in values)))  # NaN


def log_new_points(run: Any, result: Any, have: dict[tuple[str, int], set[float]], progress: bool = False) -> int:
    """Log the table's points whose value the run does not hold (`have`: run_values; updated here). At a step
    the run holds with another value (an earlier attempt's, logged before the later attempt's lines came in:
    --append, --follow) the table's value is logged after it: MLflow keeps both, the later one being the step's
    latest. result.relogged counts such steps in the run, which is then tagged OVERLAP_TAG. Returns how many
    points were logged."""
    from tqdm import tqdm

    table = result.table
    keys = list(zip(table["metric"], table["step"].astype(int), strict=True))
    values = table["value"].to_numpy()
    held = [have.get(k) for k in keys]
    new = [not _holds(h, v) for h, v in zip(held, values, strict=True)]
    over = sum(1 for h, n in zip(held, new, strict=True) if n and h is not None)
    todo = table[new] if not all(new) else table
    with tqdm(total=len(todo), unit=" points", desc="mlflow", disable=None if progress else True) as bar:
        for i in range(0, len(todo), 10_000):
            chunk = todo.iloc[i : i + 10_000]
            bar.update(run.log_points(chunk["metric"], chunk["value"], to_ms(chunk["wall_time"]), chunk["step"]))
    for key, value, n in zip(keys, values, new, strict=True):
        if n:
            have.setdefault(key, set()).add(value)
    result.relogged = sum(1 for v in have.values() if len(v) > 1)
    if over:
        run.set_tags(
            {
                OVERLAP_TAG: f"{result.relogged} points hold an earlier attempt's value and, logged after it, the "
                "later attempt's (the step's latest value; tpu_logs/overlaps.csv lists both)"
            }
        )
    return len(todo)


def wrap_up(
    run: Any,
    result: Any,
    *,
    identity: str,
    digests: list[str],
    files: list[dict],
    status: str,
    out: Path,
    extra: dict[str, Any],
    results: dict[str, Any],
    tables: Any = None,
) -> dict[str, Any]:
    """The end of an ingest or a follow: summary (also as `tpu/*` metrics), tables, plot and results.json
    into `out` and the run, identity tags, and the run ended with the log's end time. `tables`: waits for
    the tables another process writes (else they are written here)."""
    from albert_exp.tracking import write_results

    summary = {**result.summary(), "run_id": run.run_id, **extra}
    summary["points_relogged"] = result.relogged
    clock = time.perf_counter()
    if tables is not None:
        tables()
    else:
        write_tables(out, result)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "files.json").write_text(json.dumps(files, indent=2))
    results = {**results, "run_status": status, **summary}
    timings = results.setdefault("timings", {})
    timings["artifacts_s"] = round(time.perf_counter() - clock, 2)
    timings.update(cpu_seconds())
    write_results(out, results)
    run.log_artifacts(out, ARTIFACT_DIR)
    log_summary_metrics(run, summary)
    run.set_tags(
        {
            TAG_DIGEST: identity,
            TAG_FILES: ",".join(digests),
            "tpu_logs.last_checkpoint": summary["last_checkpoint"],
            "tpu_logs.finished": result.finished,
            "tpu_logs.restarts": len(result.restarts),
            "tpu_logs.start_time": summary["start_time"],
            "tpu_logs.end_time": summary["end_time"],
            "tpu_logs.projected_finish": summary.get("projected_finish"),
            "tpu_logs.following": "false" if "tpu_logs.following" in run.tags else None,
            TAG_COMPLETE: "true",
        }
    )
    # `mlflow run` made its run now: an end time from the log would precede its start
    end_ms = None if run.run_id == os.environ.get("MLFLOW_RUN_ID") else epoch_ms(result.end_time)
    run.terminate(status, end_ms)
    return results


def log_summary_metrics(run: Any, summary: dict[str, Any]) -> None:
    """The headline figures as `tpu/*` metrics at the last step (again at a later step after --append)."""
    step = summary.get("last_step", 0)
    points = {SUMMARY_METRICS[k]: summary[k] for k in SUMMARY_METRICS if summary.get(k) is not None}
    have = run.history(sorted(set(points) & set(run.metric_keys)))
    todo = {k: v for k, v in points.items() if (k, step) not in have}
    now = int(time.time() * 1000)
    run.log_points(list(todo), list(todo.values()), [now] * len(todo), [step] * len(todo))


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + sys) so far of this process and of its finished children (the parsing process)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_s": round(own.ru_utime + own.ru_stime, 2),
        "cpu_children_s": round(children.ru_utime + children.ru_stime, 2),
    }


def _unchanged(run: Any, why: str) -> dict[str, Any]:
    return {
        "status": "unchanged",
        "why": why,
        "run_id": run.run_id,
        "run_status": run.status,
        "digest": run.tags.get(TAG_DIGEST),
    }


def read_command_file(path: str) -> dict[str, str]:
    from albert_exp.tpu_logs.command import flags_from_command

    p = Path(path)
    if not p.is_file():
        raise UserError(
            "command file not found",
            where=path,
            fix="give the script that ran run_pretraining.py (e.g. the output of `albert-exp tpu-logs command`)",
        )
    flags = flags_from_command(p.read_text(encoding="utf-8", errors="replace"))
    if not flags:
        raise UserError(
            "no run_pretraining.py command with --flags in it",
            where=path,
            fix="the file should contain the command line, e.g. `python3 -m albert.run_pretraining "
            "--train_batch_size=512 ...`",
        )
    return flags
