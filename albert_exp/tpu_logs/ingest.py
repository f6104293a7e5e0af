"""Parsed TPU logs -> one MLflow run, back-filled with the log's own steps and times.

    albert-exp tpu-logs ingest pretrain-*.log --experiment tpu-recipe --run-name "tpu base-v2 b512"
    albert-exp tpu-logs ingest pretrain-3.log --append          # add a restart's log to the latest run
    albert-exp tpu-logs ingest pretrain-3.log --follow          # see follow.py

Identity: a run carries `tpu_logs.digest` (sha256 over the sorted sha256 of its files) and
`tpu_logs.file_digests`. Ingesting the same files again finds the run by digest and changes nothing; a run
whose earlier ingest died half-way (`tpu_logs.complete` not true) is completed: only the points it lacks are
logged. `--append` adds files whose digests the run does not have yet; MLflow cannot rewrite a metric
history, so steps the run already has keep their logged values there (the summary counts any that differ).

Metrics go in with `MlflowClient.log_batch` (1000 per request, MLflow's limit), run start/end times and the
status (FINISHED when the log shows the end of training, else KILLED) come from the log.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError

STAGE = "tpu-logs"
TAG_DIGEST, TAG_FILES, TAG_COMPLETE = "tpu_logs.digest", "tpu_logs.file_digests", "tpu_logs.complete"
DEFAULT_EXPERIMENT = "tpu-pretraining"
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's per-request limits of log_batch
ARTIFACT_DIR = "tpu_logs"


def run_digest(file_digests: list[str]) -> str:
    return hashlib.sha256(",".join(sorted(set(file_digests))).encode()).hexdigest()


def short(digest: str) -> str:
    return digest[:16]


def experiment_id(client: Any, name: str | None) -> str:
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name)
    if exp.lifecycle_stage == "deleted":
        raise UserError(
            f"experiment {name!r} is deleted",
            fix="restore it (mlflow experiments restore) or pick another --experiment",
        )
    return exp.experiment_id


def find_by_digest(client: Any, exp_id: str, digest: str) -> Any | None:
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG_DIGEST}` = '{digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    return runs[0] if runs else None


def append_target(client: Any, exp_id: str, run_id: str | None, run_name: str | None) -> Any:
    if run_id:
        return client.get_run(run_id)
    filt = f"tags.stage = '{STAGE}'" + (f" and attributes.run_name = '{run_name}'" if run_name else "")
    runs = client.search_runs([exp_id], filter_string=filt, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(
            "--append found no earlier tpu-logs run" + (f" named {run_name!r}" if run_name else ""),
            fix="ingest the first files without --append, or pass --run-id",
        )
    return runs[0]


def to_ms(times: Any) -> Any:
    """UTC timestamps (pandas) -> epoch milliseconds; missing times become now."""
    import pandas as pd

    s = pd.Series(times)
    if s.dt.tz is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    ms = s.to_numpy(dtype="datetime64[ms]").astype("int64")
    ms[s.isna().to_numpy()] = int(time.time() * 1000)
    return ms


def logged_points(client: Any, run_id: str, keys: list[str]) -> dict[tuple[str, int], float]:
    """What the run already has: {(metric, step): value}."""
    out: dict[tuple[str, int], float] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            out.setdefault((key, m.step), m.value)
    return out


def log_points(
    client: Any, run_id: str, table: Any, skip: dict[tuple[str, int], float] | None = None, progress: bool = True
) -> int:
    """Back-fill the table's points the run does not have yet; returns how many were logged."""
    from mlflow.entities import Metric
    from tqdm import tqdm

    ms = to_ms(table["wall_time"])
    metrics = [
        Metric(m, float(v), int(t), int(s))
        for m, v, t, s in zip(table["metric"], table["value"], ms, table["step"], strict=True)
        if not skip or (m, int(s)) not in skip
    ]
    with tqdm(total=len(metrics), unit=" points", desc="mlflow", disable=None if progress else True) as bar:
        for i in range(0, len(metrics), MAX_METRICS):
            client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS])
            bar.update(len(metrics[i : i + MAX_METRICS]))
    return len(metrics)


def log_params(client: Any, run: Any, params: dict[str, str]) -> list[str]:
    """Params are immutable in MLflow: log the new ones, report disagreements with the logged ones."""
    from mlflow.entities import Param

    have = run.data.params if run is not None else {}
    warnings = [
        f"param {k}: the run has {have[k]!r}, the new log says {v!r}; kept the run's"
        for k, v in params.items()
        if k in have and have[k] != str(v)[:6000]
    ]
    todo = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    for i in range(0, len(todo), MAX_PARAMS):
        client.log_batch(run.info.run_id, params=todo[i : i + MAX_PARAMS])
    return warnings


def set_tags(client: Any, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)[:8000]) for k, v in tags.items() if v is not None]
    for i in range(0, len(items), MAX_TAGS):
        client.log_batch(run_id, tags=items[i : i + MAX_TAGS])


def reconcile(table: Any, logged: dict[tuple[str, int], float]) -> tuple[Any, int]:
    """Make the table say what MLflow has for points logged earlier; returns (table, how many differed)."""
    if not logged or table.empty:
        return table, 0
    keys = list(zip(table["metric"], table["step"].astype(int), strict=True))
    old = [logged.get(k) for k in keys]
    differ = sum(1 for o, v in zip(old, table["value"], strict=True) if o is not None and o != v)
    table = table.copy()
    table["value"] = [v if o is None else o for o, v in zip(old, table["value"], strict=True)]
    return table, differ


def write_artifacts(
    client: Any, run_id: str, out_dir: Path, result: Any, summary: dict, files: list[dict], progress: bool = True
) -> list[str]:
    """Tables (CSV + Parquet), checkpoints, loss curve, summary, file list -> out_dir and the run."""
    from albert_exp.tpu_logs.plot import loss_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    table = result.table
    table.to_csv(out_dir / "table.csv", index=False)
    table.to_parquet(out_dir / "table.parquet", index=False)
    result.checkpoints.to_csv(out_dir / "checkpoints.csv", index=False)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / "files.json").write_text(json.dumps(files, indent=2))
    paths += ["table.csv", "table.parquet", "checkpoints.csv", "summary.json", "files.json"]
    if loss_curve(table, result.restarts, out_dir / "loss_curve.png"):
        paths.append("loss_curve.png")
    for p in paths:
        client.log_artifact(run_id, str(out_dir / p), ARTIFACT_DIR)
    return paths


def _old_table(client: Any, run_id: str) -> Any:
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/table.parquet", tmp)
        except Exception:  # a run made by hand or an older ingest: start from what MLflow has
            return None
        return pd.read_parquet(local)


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

    background: parse in a separate process while MLflow loads (None: for logs of 16 MB or more).
    """
    from albert_exp.tpu_logs.parse import BACKGROUND_MIN_BYTES, BackgroundParse, file_digest

    if not paths:
        raise UserError("no log files given", fix="albert-exp tpu-logs ingest LOG [LOG...]")
    seen: dict[str, str] = {}
    for p in paths:
        if not Path(p).is_file():
            raise UserError("log file not found", where=str(p), fix="check the path")
        seen.setdefault(file_digest(p), str(p))  # the same file given twice (or a byte-identical copy): once
    digests = list(seen)
    paths = list(seen.values())
    flags = read_command_file(command_file) if command_file else {}
    if background is None:
        background = sum(Path(p).stat().st_size for p in paths) >= BACKGROUND_MIN_BYTES
    # --append parses only the files new to the run, known once MLflow answers: not in the background.
    bg = (
        BackgroundParse(paths, year=year, timezone=timezone, progress=progress)
        if background and not (append or run_id)
        else None
    )
    try:
        return _ingest(
            paths,
            digests,
            flags,
            bg,
            experiment=experiment,
            run_name=run_name,
            year=year,
            timezone=timezone,
            append=append,
            run_id=run_id,
            out_dir=out_dir,
            progress=progress,
        )
    finally:
        if bg is not None:
            bg.cancel()  # the answer was "unchanged", or an error: nothing waits for the parse any more


def _ingest(
    paths: list[str],
    digests: list[str],
    flags: dict[str, str],
    bg: Any,
    *,
    experiment: str | None,
    run_name: str | None,
    year: int | None,
    timezone: str,
    append: bool,
    run_id: str | None,
    out_dir: str | None,
    progress: bool,
) -> dict[str, Any]:
    from mlflow import MlflowClient

    from albert_exp.tpu_logs.parse import parse_files

    client = MlflowClient()
    exp_id = experiment_id(client, experiment)
    env_run = os.environ.get("MLFLOW_RUN_ID")
    run = None
    already: dict[tuple[str, int], float] = {}
    old_table = None
    if append or (run_id and not env_run):
        run = append_target(client, exp_id, run_id, run_name)
        known = set(run.data.tags.get(TAG_FILES, "").split(","))
        new = [(d, p) for d, p in zip(digests, paths, strict=True) if short(d) not in known]
        if not new:
            return _unchanged(run, "every file is already in the run")
        all_digests = sorted(known - {""}) + [short(d) for d, _ in new]
        digests, paths = [d for d, _ in new], [p for _, p in new]
        old_table = _old_table(client, run.info.run_id)
    else:
        all_digests = [short(d) for d in digests]
        found = find_by_digest(client, exp_id, run_digest(all_digests))
        if found is not None and found.data.tags.get(TAG_COMPLETE) == "true":
            return _unchanged(found, "these files were ingested before")
        run = found or (client.get_run(env_run) if env_run else None)
    clock = time.perf_counter()
    if bg is not None:
        result = bg.result()
        timings = {"parse_wait_s": round(time.perf_counter() - clock, 2)}  # parsing ran alongside the above
    else:
        result = parse_files(paths, year=year, timezone=timezone, progress=progress)
        timings = {"parse_s": round(time.perf_counter() - clock, 2)}
    if result.table.empty or not (result.table["metric"] == "train/loss").any():
        lines = result.counts.get("lines", 0)
        raise UserError(
            f"no `loss = ..., step = ...` lines in {lines} lines "
            f"({result.counts.get('unknown format', 0)} of unknown format)",
            where=", ".join(paths),
            fix="give the console output of run_pretraining.py (`2>&1 | tee LOG` keeps stderr)",
        )
    params, warnings = _params(result, flags)
    digest = run_digest(all_digests)
    name = run_name or f"{STAGE} {Path(paths[0]).name.split('.')[0]}"
    if run is None:
        start_ms = int(to_ms(_series([result.start_time]))[0]) if result.start_time is not None else None
        run = client.create_run(
            exp_id, start_time=start_ms, run_name=name, tags={"stage": STAGE, TAG_COMPLETE: "false"}
        )
    rid = run.info.run_id
    try:
        from albert_exp.tracking import git_commit

        tags = {"stage": STAGE, "git_commit": git_commit(), TAG_COMPLETE: "false"}
        if old_table is None:  # findable by digest at once, so a crash half-way is completed by a re-run
            tags.update({TAG_DIGEST: digest, TAG_FILES: ",".join(all_digests)})
        set_tags(client, rid, tags)
        warnings += log_params(client, run, params)
        table = result.table
        overlap_differs = 0
        if old_table is not None:  # --append: earlier points stay, new segments come after them
            import pandas as pd

            table["segment"] += int(old_table["segment"].max()) + 1 if len(old_table) else 0
            both = table.merge(old_table[["metric", "step", "value"]], on=["metric", "step"], suffixes=("", "_old"))
            overlap_differs = int((both["value"] != both["value_old"]).sum())
            table = pd.concat([old_table, table], ignore_index=True)
            table = table.drop_duplicates(["metric", "step"], keep="first")
            table = table.sort_values(["metric", "step"], kind="stable").reset_index(drop=True)
        if run.data.metrics or old_table is not None:
            already = logged_points(client, rid, sorted(table["metric"].unique()))
        table, differ = reconcile(table, already)
        differ += overlap_differs
        if old_table is not None:  # restarts: the old ones, the step where the new files begin, theirs
            from albert_exp.tpu_logs.parse import restarts_of

            new_loss = result.table[result.table["metric"] == "train/loss"].sort_values(["segment", "step"])
            boundary = new_loss.iloc[0]
            result.restarts = [
                *restarts_of(old_table),
                {
                    "step": int(boundary["step"]),
                    "wall_time": boundary["wall_time"],
                    "source": str(boundary["source"]),
                    "line": int(boundary["line"]),
                },
                *result.restarts,
            ]
        result.table = table
        clock = time.perf_counter()
        logged = log_points(client, rid, table, skip=already, progress=progress)
        timings["log_metrics_s"] = round(time.perf_counter() - clock, 2)
        summary = result.summary()
        summary.update(
            run_id=rid,
            points_logged=logged,
            points_already_in_run=len(already),
            warnings=warnings,
            kept_earlier_values=differ,
        )
        out = Path(out_dir or Path("runs") / "tpu_logs" / digest[:12])
        files = [{"path": p, "sha256": d} for p, d in zip(paths, digests, strict=True)]
        clock = time.perf_counter()
        write_artifacts(client, rid, out, result, summary, files, progress)
        timings["artifacts_s"] = round(time.perf_counter() - clock, 2)
        last_ck = result.checkpoints.iloc[-1]["uri"] if len(result.checkpoints) else None
        set_tags(
            client,
            rid,
            {
                TAG_DIGEST: digest,
                TAG_FILES: ",".join(all_digests),
                "tpu_logs.last_checkpoint": last_ck,
                "tpu_logs.finished": result.finished,
                "tpu_logs.restarts": len(result.restarts),
                TAG_COMPLETE: "true",
            },
        )
        status = "FINISHED" if result.finished else "KILLED"
        end_ms = int(to_ms(_series([result.end_time]))[0]) if result.end_time is not None else None
        set_tags(client, rid, {"tpu_logs.start_time": summary["start_time"], "tpu_logs.end_time": summary["end_time"]})
        if rid == env_run:  # `mlflow run` made this run now: an end time from the log would precede its start
            end_ms = None
        client.set_terminated(rid, status, end_time=end_ms)
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    from albert_exp.tracking import write_results

    results = {"status": "ingested", "run_status": status, **summary, "timings": timings}
    write_results(out, results)
    client.log_artifact(rid, str(out / "results.json"), ARTIFACT_DIR)
    return results


def _params(result: Any, flags: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    from albert_exp.tpu_logs.summary import run_params

    return run_params(result, flags)


def _series(values: list) -> Any:
    import pandas as pd

    return pd.Series(pd.to_datetime(values, utc=True))


def _unchanged(run: Any, why: str) -> dict[str, Any]:
    return {
        "status": "unchanged",
        "why": why,
        "run_id": run.info.run_id,
        "run_status": run.info.status,
        "digest": run.data.tags.get(TAG_DIGEST),
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
