"""Log files -> a tidy pandas table (source, line, wall_time, step, metric, value, segment) and a summary.

    from albert_exp.tpu_logs.parse import parse_files
    result = parse_files(["pretrain-1.log", "pretrain-2.log.gz"], year=None)
    result.table.head(); result.summary()

What happens to the lines (see grammar.py for one line):
- files: plain, gzip (even cut short: what decompresses is kept), CRLF; an unterminated last line is cut
  (preemption) and skipped;
- years: glog times have none. Per file, from its own full-date lines (TF C++ startup lines), else `--year`
  for the first file, else a date in the file name (`pretrain-20200407T...log`), else the file's modification
  time (its last line cannot be later); other files take the year that puts them nearest to that reference.
  Within a file times stay monotonic across new year (Dec 31 -> Jan 1 adds a year);
- restarts: a new file or a step going back starts a *segment* (an attempt); files are ordered by their
  first time when every file has one, else by their first loss step. A (metric, step) logged by several
  attempts keeps the latest attempt's value (tables.OVERLAP_RULE; the superseded ones are listed in `overlaps`);
  within an attempt the glog and absl copies of a line collapse into one (the timed copy wins);
- time zones: `--timezone` names the TPU host's clock; in a DST fall-back the repeated hour is resolved by
  the order of the lines.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError
from albert_exp.files import is_gzip
from albert_exp.tpu_logs.grammar import CHATTER, MAX_LINE, NO_DATA, TRUNCATED, FileParser, is_special
from albert_exp.tpu_logs.tables import write_tables
from albert_exp.tpu_logs.years import assign_years

CHUNK_LINES = 16_384  # lines per pre-filter pass and progress update (a pass with a special line re-scans its lines)
GLOG_START = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [^\]]*\] ")


def _gunzip(data: bytes) -> tuple[bytes, bool]:
    """Decompress (multi-member) gzip; a stream cut short keeps what was readable. Returns (bytes, complete)."""
    out: list[bytes] = []
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            for i in range(0, len(data), 1 << 20):
                out.append(d.decompress(data[i : i + (1 << 20)]))
                if d.eof:
                    break
        except zlib.error:
            return b"".join(out), False
        if not d.eof:
            return b"".join(out), False
        data = d.unused_data
    return b"".join(out), True


def split_lines(data: bytes) -> tuple[list[str], str]:
    """Bytes -> complete lines and the unterminated tail ('' when the data ended with a newline)."""
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    return lines, lines.pop()


def read_log(path: str | Path) -> tuple[list[str], str, list[str]]:
    """A log file -> (complete lines, unterminated tail, notes). Missing or unreadable files are UserErrors."""
    p = Path(path)
    if not p.is_file():
        raise UserError(
            "log file not found",
            where=str(path),
            fix="give the files the TPU run wrote (e.g. `2>&1 | tee pretrain.log`)",
        )
    data = p.read_bytes()
    notes = []
    if is_gzip(data):
        data, complete = _gunzip(data)
        if not complete:
            notes.append(f"{p.name}: gzip stream cut short; parsed what could be decompressed")
    lines, tail = split_lines(data)
    return lines, tail, notes


# ---------------------------------------------------------------------------------------------------------
# Files -> tables


@dataclass
class ParsedFile:
    path: str
    parser: FileParser
    tail: str
    notes: list[str]
    offsets: list[int] = field(default_factory=list)  # year offset per timeline entry
    base_year: int | None = None
    times: list[datetime | None] = field(default_factory=list)
    utc: Any = None  # numpy datetime64 per timeline entry (+ a trailing NaT), set by build_result

    def first_time(self) -> datetime | None:
        return self.times[self.parser.first_ti] if self.parser.first_ti >= 0 else None


@dataclass
class ParseResult:
    files: list[ParsedFile]
    table: Any  # pandas DataFrame: source, line, wall_time, step, metric, value, segment
    checkpoints: Any  # pandas DataFrame: step, uri, wall_time, source, line, segment
    params: dict[str, str]
    flags: dict[str, str]
    input_files: list[str]
    counts: dict[str, int]
    duplicates: int
    overlaps: Any  # pandas DataFrame: metric, step, value, source, line, value_superseded, source_superseded, ...
    restarts: list[dict]
    finished: bool
    start_time: datetime | None
    end_time: datetime | None
    year_source: str
    notes: list[str]
    timezone: str = "UTC"
    relogged: int = 0  # points of the run holding an earlier attempt's value before the later one's (ingest)

    def without_rows(self) -> ParseResult:
        """A copy without the per-line columns of the parsers (the table holds the points), to send cheaply."""
        import copy

        out = copy.copy(self)
        out.files = []
        for f in self.files:
            p = copy.copy(f.parser)
            p.line = p.ti = p.own = p.step = p.metric = p.value = p.seg = p.timeline = []
            out.files.append(ParsedFile(f.path, p, f.tail, f.notes, base_year=f.base_year))
        return out

    def summary(self) -> dict[str, Any]:
        from albert_exp.tpu_logs.summary import summarize

        return summarize(self)


def _has_special(chunk: list[str]) -> bool:
    text = "\n".join(chunk)
    return "run_pretraining" in text or "\x00" in text or "\ufffd" in text or max(map(len, chunk), default=0) > MAX_LINE


def parse_file(path: str | Path, *, progress: Any = None) -> ParsedFile:
    """One file through the grammar. Chatter (most of a TPU log) is recognised by one regex per line and
    only counted; the parser sees the other lines with the time of the last glog line before each, so the
    result is exactly what feeding every line gives (tests check this)."""
    lines, tail, notes = read_log(path)
    parser = FileParser(Path(path).name)
    chatter, glog = CHATTER.match, GLOG_START.match
    prev = -1  # the last line the parser saw
    for start in range(0, len(lines), CHUNK_LINES):
        chunk = lines[start : start + CHUNK_LINES]
        keep = [i for i, text in enumerate(chunk, start) if not chatter(text)]
        if _has_special(chunk):  # rare: the command line, binary garbage
            keep = sorted({*keep, *(i for i, text in enumerate(chunk, start) if is_special(text))})
        for i in keep:
            for j in range(i - 1, prev, -1):  # the latest glog time among the chatter lines skipped since
                if glog(lines[j]):
                    parser.glog_time(lines[j], j + 1)
                    break
            parser.feed_line(lines[i], i + 1)
            prev = i
        parser.counts[NO_DATA] += len(chunk) - len(keep)
        parser.lines_read += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
    for j in range(len(lines) - 1, prev, -1):  # the file's last time, when its last glog line was chatter
        if glog(lines[j]):
            parser.glog_time(lines[j], j + 1)
            break
    if tail:
        parser.counts[TRUNCATED] += 1
        parser.lines_read += 1
    parser.close()
    return ParsedFile(str(path), parser, tail, notes)


def parse_files(
    paths: list[str | Path],
    *,
    year: int | None = None,
    timezone: str = "UTC",
    now: datetime | None = None,
    progress: bool = True,
) -> ParseResult:
    from tqdm import tqdm

    parsed = []
    with tqdm(unit=" lines", desc="parse", unit_scale=True, disable=None if progress else True) as bar:
        for p in paths:
            parsed.append(parse_file(p, progress=bar))
    year_source = assign_years(parsed, year, now)
    return build_result(parsed, year_source, timezone)


BACKGROUND_MIN_BYTES = 16 << 20  # below this, spawning a process costs more than the overlap wins (forking: any)


class BackgroundParse:
    """`parse_files` in another process (forked or spawned: `_start_method`), so that parsing overlaps the
    seconds MLflow takes to import and open its store. `result()` returns the ParseResult or re-raises the
    parser's error; with `tables_dir` the process then writes the tables and the plot there
    (tables.write_tables) while the caller logs the points, and `tables()` waits for them.

    The process ends with its parent, always: it asks the kernel for SIGKILL when the parent dies (a kill -9
    too), and `cancel()` (in the caller's `finally`, reached on SIGTERM as well) ends and reaps it."""

    def __init__(self, paths: list[str], tables_dir: str | Path | None = None, **kwargs: Any):
        import multiprocessing as mp
        import os

        self.method = _start_method()
        ctx = mp.get_context(self.method)
        self._recv, send = ctx.Pipe(duplex=False)
        args = (send, self._recv, [str(p) for p in paths], kwargs, tables_dir and str(tables_dir), os.getpid())
        self._proc = ctx.Process(target=_parse_worker, args=args, daemon=True)
        self._proc.start()
        send.close()

    def _next(self) -> Any:
        try:
            ok, payload = self._recv.recv()
        except EOFError:
            self._proc.join()
            raise RuntimeError(f"the parsing process died (exit code {self._proc.exitcode})") from None
        if not ok:
            raise payload
        return payload

    def result(self) -> ParseResult:
        return self._next()

    def tables(self) -> None:
        self._next()
        self._proc.join()

    def cancel(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()


def can_fork() -> bool:
    """Whether this process has one thread (an `albert-exp` command before MLflow loads), so that a forked child
    is safe: forking a process with other threads can deadlock the child. Counts native threads too (torch's,
    BLAS's)."""
    import os

    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:  # no /proc: not Linux
        return False


def _start_method() -> str:
    """ "fork" where safe: the child starts at once with the modules already imported, pandas too (imported here
    first: the parent needs it as well), which saves it ~0.6 CPU-s of start-up. Else "spawn" (a fresh
    interpreter)."""
    if not can_fork():
        return "spawn"
    import pandas  # noqa: F401

    return "fork"


def _parse_worker(
    conn: Any, parent_end: Any, paths: list[str], kwargs: dict, tables_dir: str | None, parent_pid: int
) -> None:
    import signal
    import threading

    from albert_exp.processes import die_with_parent

    die_with_parent(parent_pid)  # parsing a big log takes seconds: not one of them after the parent is gone
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked with the parent's handler: cancel() ends it at once
    # a forked child inherits the parent's end of the pipe: closed here, a parent killed with -9 is a broken pipe
    # for the child, not a send that waits for a reader forever (and a process left behind)
    parent_end.close()
    sender = None
    try:
        result = parse_files(paths, **kwargs)
        # the result is more than a pipe holds: sent from a thread, so that the tables are written meanwhile
        # rather than after the parent (busy loading MLflow) has read it
        sender = threading.Thread(target=_send, args=(conn, (True, result.without_rows())))
        sender.start()
        if tables_dir:
            write_tables(Path(tables_dir), result)
            sender.join()
            _send(conn, (True, None))
    except BaseException as exc:  # sent back and re-raised in the parent
        if sender is not None:
            sender.join()
        _send(conn, (False, exc))
    finally:
        if sender is not None:
            sender.join()
        conn.close()


def _send(conn: Any, message: tuple) -> None:
    try:
        conn.send(message)
    except OSError:  # broken pipe: the parent is gone (killed), nobody to tell
        pass


def _order(files: list[ParsedFile]) -> list[ParsedFile]:
    """Attempt order: by each file's first time when every file has one, else by its first loss step (a
    restart resumes from a later checkpoint), files without a loss line last, ties as given."""
    if all(f.first_time() is not None for f in files):
        return sorted(files, key=lambda f: f.first_time())

    def first_step(f: ParsedFile) -> float:
        p = f.parser
        return next((s for m, s in zip(p.metric, p.step, strict=True) if m == "train/loss"), float("inf"))

    return sorted(files, key=first_step)


def localize(times: list[datetime | None], timezone: str) -> Any:
    """A file's naive times (the TPU host's clock, in file order) -> UTC as numpy datetime64[ns], with a NaT
    appended so that timeline index -1 (no time) selects NaT. In the hour a DST fall-back repeats, a time is
    the first (summer) pass until the clock is seen going back, the second pass after that."""
    import numpy as np
    import pandas as pd

    naive = pd.DatetimeIndex(pd.to_datetime(pd.Series(times, dtype="object")))
    if timezone != "UTC":
        try:
            summer = naive.tz_localize(timezone, ambiguous=np.ones(len(naive), bool), nonexistent="shift_forward")
        except Exception as exc:  # an unknown zone name
            raise UserError(
                f"unknown time zone {timezone!r}: {exc}", fix="use an IANA name such as UTC or Europe/Berlin"
            ) from None
        winter = naive.tz_localize(timezone, ambiguous=np.zeros(len(naive), bool), nonexistent="shift_forward")
        dst, went_back, prev = np.ones(len(naive), bool), False, None
        for i in np.flatnonzero(summer != winter):  # the repeated hour only: consecutive entries
            if prev != i - 1:
                went_back = False  # a new stretch (another night, another year)
            elif naive[i] < naive[prev]:
                went_back = True  # the clock went back: from here on the second (winter) pass
            dst[i], prev = not went_back, i
        naive = naive.tz_localize(timezone, ambiguous=dst, nonexistent="shift_forward").tz_convert("UTC")
        naive = naive.tz_localize(None)
    return np.append(naive.to_numpy("datetime64[ns]"), np.datetime64("NaT", "ns"))


def _rows(files: list[ParsedFile], timezone: str) -> tuple[Any, Any]:
    """Every data row of every file (before any rule) and every checkpoint, with UTC times and segments
    numbered across files in attempt order."""
    import numpy as np
    import pandas as pd

    frames, ckpts, seg_offset = [], [], 0
    for n, f in enumerate(files):
        p = f.parser
        f.utc = localize(f.times if f.times else [None] * len(p.timeline), timezone)
        frames.append(
            pd.DataFrame(
                {
                    "file": n,
                    "line": np.asarray(p.line, dtype="int64"),
                    "time": f.utc[np.asarray(p.ti, dtype="int64")],
                    "own": np.asarray(p.own, dtype=bool),
                    "step": np.asarray(p.step, dtype="int64"),
                    "metric": p.metric,
                    "value": np.asarray(p.value, dtype="float64"),
                    "segment": np.asarray(p.seg, dtype="int64") + seg_offset,
                }
            )
        )
        for line, ti, step, uri, seg in p.checkpoints:
            ckpts.append((step, uri, f.utc[ti], p.source, line, seg + seg_offset))
        seg_offset += (max(p.seg) + 1) if p.seg else 1
    rows = pd.concat(frames, ignore_index=True)
    rows["time"] = rows.groupby("file")["time"].bfill()  # absl lines before the file's first timed line
    rows["source"] = np.array([f.parser.source for f in files], dtype=object)[rows["file"].to_numpy()]
    ck = pd.DataFrame(ckpts, columns=["step", "uri", "wall_time", "source", "line", "segment"])
    ck["wall_time"] = pd.to_datetime(ck["wall_time"]).dt.tz_localize("UTC")
    ck = ck.sort_values(["segment", "line"], kind="stable").drop_duplicates("step", keep="first")
    return rows, ck.sort_values("step").reset_index(drop=True)


TABLE_COLUMNS = ["source", "line", "wall_time", "step", "metric", "value", "segment"]


def resolve(rows: Any) -> tuple[Any, Any, int]:
    """The rules: within an attempt (segment) the glog and absl copies of a line are one point (the timed
    copy wins); across attempts tables.OVERLAP_RULE (the latest attempt wins). Returns (table, overlaps: the
    superseded points beside the kept ones, number of copies collapsed)."""
    rows = rows.sort_values(["metric", "step", "segment", "own", "line"], kind="stable")
    per_attempt = rows.drop_duplicates(["metric", "step", "segment"], keep="last")
    kept = per_attempt.drop_duplicates(["metric", "step"], keep="last")  # segments ascend: the latest attempt
    superseded = per_attempt.drop(kept.index)
    overlaps = kept[["metric", "step", "value", "source", "line"]].merge(
        superseded[["metric", "step", "value", "source", "line"]], on=["metric", "step"], suffixes=("", "_superseded")
    )
    kept = _borrow_times(kept, rows)
    table = kept.assign(wall_time=kept["time"].dt.tz_localize("UTC"))[TABLE_COLUMNS]
    return table.reset_index(drop=True), overlaps.reset_index(drop=True), len(rows) - len(per_attempt)


def _borrow_times(kept: Any, rows: Any) -> Any:
    """A file without any timestamp borrows the time of the same point in a timed file (a glog copy)."""
    import pandas as pd

    if not kept["time"].isna().any():
        return kept
    timed = rows[rows["own"] & rows["time"].notna()].drop_duplicates(["metric", "step", "value"], keep="last")
    fill = kept.merge(
        timed[["metric", "step", "value", "time"]], on=["metric", "step", "value"], how="left", suffixes=("", "_dup")
    )["time_dup"].to_numpy()
    return kept.assign(time=kept["time"].fillna(pd.Series(fill, index=kept.index)))


def restarts_of(rows: Any) -> list[dict]:
    """Where each attempt after the first begins: its first loss step, also when an earlier attempt had
    already logged that step."""
    loss = rows[rows["metric"] == "train/loss"].sort_values(["segment", "step"], kind="stable")
    firsts = loss.groupby("segment").head(1)
    return [
        {"step": int(r.step), "wall_time": _utc(r.time), "source": r.source, "line": int(r.line)}
        for r in firsts.itertuples()
        if r.segment != loss["segment"].min()
    ]


def _utc(t: Any) -> Any:
    """A naive UTC numpy/pandas time -> a UTC pandas Timestamp (None for NaT)."""
    import pandas as pd

    return None if pd.isna(t) else pd.Timestamp(t).tz_localize("UTC")


def build_result(files: list[ParsedFile], year_source: str, timezone: str = "UTC") -> ParseResult:
    files = _order(files)
    rows, checkpoints = _rows(files, timezone)
    table, overlaps, duplicates = resolve(rows)
    notes = [n for f in files for n in f.notes]
    if table["wall_time"].isna().any():
        notes.append("some points have no timestamp in any file; they get the ingest time")
    counts: dict[str, int] = {"lines": 0}
    params: dict[str, str] = {}
    flags: dict[str, str] = {}
    inputs: list[str] = []
    for f in files:
        p = f.parser
        for k, v in p.counts.items():
            counts[k] = counts.get(k, 0) + v
        counts["lines"] += p.lines_read
        params.update(p.params)
        flags.update(p.flags)
        inputs.extend(x for x in p.input_files if x not in inputs)
    data_files = [f for f in files if "train/loss" in f.parser.metric]
    times = [t for f in files for t in f.utc[:-1] if t == t]  # NaT != NaT
    return ParseResult(
        files,
        table.sort_values(["metric", "step"], kind="stable").reset_index(drop=True),
        checkpoints,
        params,
        flags,
        inputs,
        counts,
        duplicates,
        overlaps,
        restarts_of(rows),
        bool(data_files) and data_files[-1].parser.finished_ti is not None,
        _utc(min(times)) if times else None,
        _utc(max(times)) if times else None,
        year_source,
        notes,
        timezone,
    )
