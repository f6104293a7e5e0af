"""Follow a growing TPU log: log new points to a RUNNING MLflow run as the job prints them.

    albert-exp tpu-logs ingest pretrain-0.log pretrain-1.log --follow            # tails the last file
    albert-exp tpu-logs ingest pretrain-1.log --follow --append                  # resume following later

The files' current contents go in first (like a plain ingest, into a run left RUNNING); then the last file is
polled every `poll_s` seconds. Only complete lines are parsed (a half-written line waits for its newline),
through the same grammar and year rules. The run ends FINISHED when the log shows the end of training,
KILLED when following stops first (`idle_exit_s` without new bytes, `max_s`, Ctrl-C); the tables, the plot,
the summary and the digest of the files as last read are written then, so a later plain ingest of the same
files finds this run.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError


class _Tail:
    """Complete lines appended to a file since the last read."""

    def __init__(self, path: str, offset: int, pending: bytes):
        self.path, self.offset, self.pending = path, offset, pending

    def read(self) -> list[str] | None:
        size = os.path.getsize(self.path)
        if size < self.offset:  # truncated or replaced: start over from the top of the new file
            self.offset, self.pending = 0, b""
        if size == self.offset:
            return None
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset = size
        data = self.pending + data
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        if not cut:
            return []
        from albert_exp.tpu_logs.parse import split_lines

        lines, _ = split_lines(data[:cut])
        return lines


def follow(
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
    poll_s: float = 5.0,
    idle_exit_s: float | None = None,
    max_s: float | None = None,
    stop: threading.Event | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    import pandas as pd
    from mlflow import MlflowClient

    from albert_exp.tpu_logs import ingest as ing
    from albert_exp.tpu_logs.grammar import FileParser
    from albert_exp.tpu_logs.parse import ParsedFile, assign_years, build_result, file_digest, parse_file
    from albert_exp.tpu_logs.parse import split_lines as split

    if not paths:
        raise UserError("no log file to follow", fix="albert-exp tpu-logs ingest LOG --follow")
    for p in paths:
        if not Path(p).is_file():
            raise UserError("log file not found", where=p, fix="start following once the job has created it")
    last = paths[-1]
    if Path(last).read_bytes()[:2] == b"\x1f\x8b":
        raise UserError("cannot follow a gzip file", where=last, fix="follow the plain log the job is writing")
    # The files as they are now: the earlier ones whole, the followed one up to its last complete line.
    files = [parse_file(p) for p in paths[:-1]]
    data = Path(last).read_bytes()
    cut = data.rfind(b"\n") + 1
    lines, _ = split(data[:cut])
    parser = FileParser(Path(last).name)
    parser.feed(lines, 1)
    followed = ParsedFile(last, parser, "", [])
    files.append(followed)
    tail = _Tail(last, cut, data[cut:])
    now = datetime.now()
    year_source = assign_years(files, year, now)
    result = build_result(files, year_source, timezone)
    flags = ing.read_command_file(command_file) if command_file else {}
    params, warnings = ing._params(result, flags)
    client = MlflowClient()
    exp_id = ing.experiment_id(client, experiment)
    if append or run_id:
        run = ing.append_target(client, exp_id, run_id, run_name)
    else:
        start_ms = int(ing.to_ms(ing._series([result.start_time or pd.Timestamp.now(tz="UTC")]))[0])
        run = client.create_run(
            exp_id,
            start_time=start_ms,
            run_name=run_name or f"{ing.STAGE} {Path(paths[0]).name.split('.')[0]}",
            tags={"stage": ing.STAGE, ing.TAG_COMPLETE: "false"},
        )
    rid = run.info.run_id
    from albert_exp.tracking import git_commit, write_results

    ing.set_tags(
        client,
        rid,
        {"stage": ing.STAGE, "git_commit": git_commit(), "tpu_logs.following": "true", ing.TAG_COMPLETE: "false"},
    )
    warnings += ing.log_params(client, run, params)
    logged = ing.logged_points(client, rid, sorted(run.data.metrics)) if (append or run_id) else {}
    logged.update(_log_new(client, rid, result.table, logged, progress))
    n_rows, n_ckpt = len(parser.line), len(parser.checkpoints)
    started, idle_since = time.monotonic(), time.monotonic()
    status = "KILLED"
    try:
        while parser.finished_ti is None:
            if stop is not None and stop.is_set():
                break
            if max_s is not None and time.monotonic() - started > max_s:
                break
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break
            new = tail.read()
            if new is None:
                time.sleep(poll_s)
                continue
            idle_since = time.monotonic()
            parser.feed(new, parser.lines_read + 1)
            n_rows, n_ckpt = _flush(client, rid, followed, files, year, now, timezone, n_rows, n_ckpt, logged, progress)
    except KeyboardInterrupt:
        pass
    parser.close()
    _flush(client, rid, followed, files, year, now, timezone, n_rows, n_ckpt, logged, progress)
    if parser.finished_ti is not None:
        status = "FINISHED"
    # Final tables: what MLflow holds (first-logged values), the plot, the summary, the identity tags.
    result = build_result(files, assign_years(files, year, now), timezone)
    result.table, differ = ing.reconcile(result.table, logged)
    digests = [file_digest(p) for p in paths]
    known = set(run.data.tags.get(ing.TAG_FILES, "").split(",")) - {""} if (append or run_id) else set()
    all_digests = sorted(known | {ing.short(d) for d in digests})
    digest = ing.run_digest(all_digests)
    summary = result.summary()
    summary.update(
        run_id=rid,
        points_logged=len(logged),
        warnings=warnings,
        kept_earlier_values=differ,
        followed=last,
        status_reason="end of training in the log"
        if status == "FINISHED"
        else "stopped following before the log showed the end of training",
    )
    out = Path(out_dir or Path("runs") / "tpu_logs" / digest[:12])
    ing.write_artifacts(
        client,
        rid,
        out,
        result,
        summary,
        [{"path": p, "sha256": d} for p, d in zip(paths, digests, strict=True)],
        progress,
    )
    last_ck = result.checkpoints.iloc[-1]["uri"] if len(result.checkpoints) else None
    ing.set_tags(
        client,
        rid,
        {
            ing.TAG_DIGEST: digest,
            ing.TAG_FILES: ",".join(all_digests),
            "tpu_logs.last_checkpoint": last_ck,
            "tpu_logs.finished": result.finished,
            "tpu_logs.restarts": len(result.restarts),
            "tpu_logs.following": "false",
            ing.TAG_COMPLETE: "true",
        },
    )
    end_ms = int(ing.to_ms(ing._series([result.end_time]))[0]) if result.end_time is not None else None
    client.set_terminated(rid, status, end_time=end_ms)
    results = {"status": "followed", "run_status": status, **summary}
    write_results(out, results)
    client.log_artifact(rid, str(out / "results.json"), ing.ARTIFACT_DIR)
    return results


def _flush(
    client: Any,
    rid: str,
    followed: Any,
    files: list,
    year: int | None,
    now: datetime,
    timezone: str,
    n_rows: int,
    n_ckpt: int,
    logged: dict,
    progress: bool,
) -> tuple[int, int]:
    """Log the followed file's rows and checkpoints that appeared since the last flush."""
    import pandas as pd

    from albert_exp.tpu_logs import ingest as ing
    from albert_exp.tpu_logs.parse import _localize, assign_years

    p = followed.parser
    if len(p.line) > n_rows:
        assign_years(files, year, now)  # cheap: the timeline holds only the times that carry data
        times = followed.times
        new = pd.DataFrame(
            {
                "metric": p.metric[n_rows:],
                "step": p.step[n_rows:],
                "value": p.value[n_rows:],
                "wall_time": _localize([times[i] if i >= 0 and times else None for i in p.ti[n_rows:]], timezone),
            }
        ).drop_duplicates(["metric", "step"], keep="first")
        logged.update(_log_new(client, rid, new, logged, progress=False))
    if len(p.checkpoints) > n_ckpt:
        ing.set_tags(client, rid, {"tpu_logs.last_checkpoint": p.checkpoints[-1][3]})
    return len(p.line), len(p.checkpoints)


def _log_new(client: Any, rid: str, table: Any, logged: dict, progress: bool) -> dict:
    import numpy as np

    from albert_exp.tpu_logs.ingest import log_points

    keep = np.array(
        [(m, int(s)) not in logged for m, s in zip(table["metric"], table["step"], strict=True)], dtype=bool
    )
    todo = table[keep]  # a boolean array, not a list: an empty list would select columns
    if len(todo):
        log_points(client, rid, todo, progress=progress)
    return {(m, int(s)): float(v) for m, s, v in zip(todo["metric"], todo["step"], todo["value"], strict=True)}
