"""Follow a growing TPU log: log new points to a RUNNING MLflow run as the job prints them.

    albert-exp tpu-logs ingest pretrain-0.log pretrain-1.log --follow            # tails the last file
    albert-exp tpu-logs ingest pretrain-1.log --follow --append                  # resume following later

The files' current contents go in first (like a plain ingest, into a run left RUNNING); then the last file is
polled every `poll_s` seconds. Only complete lines are parsed (a half-written line waits for its newline),
through the same grammar, year and overlap rules: a restart's re-run steps are logged again, after the earlier
attempt's values (MLflow cannot rewrite a point; the later value is the step's latest) and the run is tagged
`tpu_logs.overlap` (ingest.log_new_points). After the end-of-training markers the job may still
evaluate (`--do_eval` prints its eval block afterwards): following goes on until the log has been quiet for
`finish_wait_s`, or stops at once when the command (echoed in the log or --command-file) has no --do_eval.
It also stops after `idle_exit_s` without new bytes, after `max_s`, on Ctrl-C or SIGTERM (kill, timeout,
docker stop, systemd). Whatever stops it, the wrap-up of a plain ingest runs (ingest.wrap_up: tables, plot,
summary, identity tags, so a later plain ingest of the same files finds this run) and the run ends FINISHED
when the log showed the end of training, else KILLED.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError
from albert_exp.files import is_gzip

FINISH_WAIT_S = 300.0  # TPU evaluation after training: compiling the eval graph alone can take minutes


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


@dataclass
class _Stop:
    """When to stop tailing."""

    poll_s: float
    idle_exit_s: float | None
    max_s: float | None
    finish_wait_s: float
    event: threading.Event | None

    def reason(self, parser: Any, started: float, quiet: float, eval_expected: bool) -> str | None:
        if self.event is not None and self.event.is_set():
            return "stopped"
        if self.max_s is not None and time.monotonic() - started > self.max_s:
            return f"--max-seconds {self.max_s:g} reached"
        if parser.finished_ti is not None and (not eval_expected or quiet > self.finish_wait_s):
            return "end of training in the log"
        if self.idle_exit_s is not None and quiet > self.idle_exit_s:
            return f"no new lines for {self.idle_exit_s:g} s"
        return None


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
    finish_wait_s: float = FINISH_WAIT_S,
    stop: threading.Event | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from albert_exp.tpu_logs import ingest as ing
    from albert_exp.tpu_logs import runs
    from albert_exp.tracking import RunStore, signals_as_interrupt

    if not paths:
        raise UserError("no log file to follow", fix="albert-exp tpu-logs ingest LOG --follow")
    for p in paths:
        if not Path(p).is_file():
            raise UserError("log file not found", where=p, fix="start following once the job has created it")
    last = paths[-1]
    if is_gzip(Path(last).read_bytes()[:2]):
        raise UserError("cannot follow a gzip file", where=last, fix="follow the plain log the job is writing")
    flags = ing.read_command_file(command_file) if command_file else {}
    live = _Live(paths, year, timezone)
    store = RunStore(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or runs.DEFAULT_EXPERIMENT)
    if append or run_id:
        run = runs.append_target(store, run_id, run_name)
    else:
        run = store.create(
            run_name or f"{runs.STAGE} {Path(paths[0]).name.split('.')[0]}",
            runs.epoch_ms(live.result.start_time) or int(time.time() * 1000),
            {"stage": runs.STAGE, runs.TAG_COMPLETE: "false"},
        )
    until = _Stop(poll_s, idle_exit_s, max_s, finish_wait_s, stop)
    if append or run_id:
        live.earlier = runs.earlier_of(run, runs.log_files(paths))
        live.result = live.build()
    command = {**flags, **{k: v for f in live.files for k, v in f.parser.flags.items()}}
    reason, warnings, live.have = "interrupted (Ctrl-C or SIGTERM)", [], {}
    with signals_as_interrupt(), run.ended_on_error():
        try:
            warnings = ing.begin(run, live.result, flags, {"tpu_logs.following": "true"})
            live.have = ing.run_values(run)
            ing.log_new_points(run, live.result, live.have, progress)
            reason = live.tail(run, until, _eval_expected(command))
        except KeyboardInterrupt:
            pass  # the wrap-up below ends the run
        return _wrap_up(ing, run, live, reason, warnings, append or bool(run_id), out_dir)


def _eval_expected(flags: dict[str, str]) -> bool:
    """Whether an evaluation may follow the end of training: unknown (so yes) without the command."""
    if not flags:
        return True
    return str(flags.get("do_eval", "false")).lower() in ("true", "1", "yes")


class _Live:
    """The files as they are now (the earlier ones whole, the followed one up to its last complete line),
    then the followed file's new lines as they come."""

    def __init__(self, paths: list[str], year: int | None, timezone: str):
        from albert_exp.tpu_logs.grammar import FileParser
        from albert_exp.tpu_logs.parse import ParsedFile, parse_file, split_lines

        self.paths, self.year, self.timezone, self.now = paths, year, timezone, datetime.now()
        self.files = [parse_file(p) for p in paths[:-1]]
        data = Path(paths[-1]).read_bytes()
        cut = data.rfind(b"\n") + 1
        self.parser = FileParser(Path(paths[-1]).name)
        self.parser.feed(split_lines(data[:cut])[0], 1)
        self.files.append(ParsedFile(paths[-1], self.parser, "", []))
        self._tail = _Tail(paths[-1], cut, data[cut:])
        self.earlier: Any = None  # ingest.Earlier: what the run holds (following --append)
        self.result = self.build()
        self.have: dict[tuple[str, int], set[float]] = {}  # what the run holds (ingest.run_values)

    def build(self) -> Any:
        """The files' table by the rules of a plain ingest; after what the run held when following --append."""
        from albert_exp.tpu_logs.ingest import merge_earlier
        from albert_exp.tpu_logs.parse import assign_years, build_result

        result = build_result(self.files, assign_years(self.files, self.year, self.now), self.timezone)
        if self.earlier is not None:
            merge_earlier(result, self.earlier)
        return result

    def tail(self, run: Any, until: _Stop, eval_expected: bool) -> str:
        """Poll the followed file, logging new points, until `until` says why to stop."""
        from albert_exp.tpu_logs.ingest import log_new_points

        started = idle_since = time.monotonic()
        rows, checkpoints = len(self.parser.line), len(self.parser.checkpoints)
        while (reason := until.reason(self.parser, started, time.monotonic() - idle_since, eval_expected)) is None:
            new = self._tail.read()
            if new is None:
                time.sleep(until.poll_s)
                continue
            idle_since = time.monotonic()
            self.parser.feed(new, self.parser.lines_read + 1)
            if len(self.parser.line) > rows:  # the same rules as a plain ingest; logged points are skipped
                rows, self.result = len(self.parser.line), self.build()
                log_new_points(run, self.result, self.have)
            if len(self.parser.checkpoints) > checkpoints:
                checkpoints = len(self.parser.checkpoints)
                run.set_tags({"tpu_logs.last_checkpoint": self.parser.checkpoints[-1][3]})
        return reason


def _wrap_up(
    ing: Any, run: Any, live: _Live, reason: str, warnings: list[str], appending: bool, out_dir: str | None
) -> dict[str, Any]:
    from albert_exp.tpu_logs import runs

    live.parser.close()  # an eval block still open at the end of the file
    live.result = result = live.build()
    ing.log_new_points(run, result, live.have)
    known = [d for d in run.tags.get(runs.TAG_FILES, "").split(",") if d] if appending else []
    digests, files = runs.run_files(known, live.earlier, runs.log_files(live.paths))  # the files as they are now
    status = "FINISHED" if live.parser.finished_ti is not None else "KILLED"
    return ing.wrap_up(
        run,
        result,
        identity=runs.run_digest(digests, live.year, live.timezone),
        digests=digests,
        files=files,
        status=status,
        out=Path(out_dir or ing.default_out(runs.run_digest(digests, live.year, live.timezone))),
        extra={
            "warnings": warnings,
            "followed": live.paths[-1],
            "status_reason": reason
            if status == "FINISHED"
            else f"stopped following before the end of training: {reason}",
        },
        results={"status": "followed"},
    )
