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
- restarts: a new file or a step going back starts a *segment*; files are ordered by their first time (when
  every file has one, else as given) and for a (metric, step) logged in several segments the later segment
  wins; within a segment the glog and absl copies of a line collapse into one (the timed copy wins).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError
from albert_exp.tpu_logs.grammar import TRUNCATED, FileParser
from albert_exp.tpu_logs.years import assign_years

CHUNK_LINES = 50_000


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    if data[:2] == b"\x1f\x8b":
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
    superseded: int
    restarts: list[dict]
    finished: bool
    start_time: datetime | None
    end_time: datetime | None
    year_source: str
    notes: list[str]
    timezone: str = "UTC"

    def summary(self) -> dict[str, Any]:
        from albert_exp.tpu_logs.summary import summarize

        return summarize(self)


# INFO lines whose message cannot start a data line (see grammar.DATA_START), as RE2 patterns (no lookahead):
# a first character no data message starts with, or a data first character followed by the wrong second one.
_CHATTER_MSG = r"(?:[^lgeS*LtT \t]|l[^o]|g[^l]|e[^x]|S[^a]|\*[^*]|L[^o]|t[^r]|T[^r])"
CHATTER = r"^(?:I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [^\]]*\] |INFO:[^:]*:)" + _CHATTER_MSG
SPECIAL = "run_pretraining|\x00|\ufffd"  # the command line, binary garbage: always looked at
GLOG_START = r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [^\]]*\] "


def chatter_masks(lines: list[str]) -> tuple[Any, Any]:
    """(chatter, glog) boolean arrays, computed in bulk by Arrow's C++ regex engine: most of a TPU log is
    infeed/outfeed chatter, and a Python loop over every line would be most of the ingest time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(lines, type=pa.large_string())
    special = pc.or_(pc.match_substring_regex(arr, SPECIAL), pc.greater(pc.utf8_length(arr), 20_000))
    chatter = pc.and_(pc.match_substring_regex(arr, CHATTER), pc.invert(special))
    glog = pc.match_substring_regex(arr, GLOG_START)
    return chatter.to_numpy(zero_copy_only=False), glog.to_numpy(zero_copy_only=False)


def parse_file(path: str | Path, *, progress: Any = None) -> ParsedFile:
    import numpy as np

    lines, tail, notes = read_log(path)
    parser = FileParser(Path(path).name)
    for start in range(0, len(lines), CHUNK_LINES * 10):
        chunk = lines[start : start + CHUNK_LINES * 10]
        chatter, glog = chatter_masks(chunk)
        keep = np.flatnonzero(~chatter)
        glog_idx = np.flatnonzero(glog)
        pos = np.searchsorted(glog_idx, keep) - 1  # the last glog line before each kept line
        before = np.where(pos >= 0, glog_idx[np.maximum(pos, 0)], -1) if len(glog_idx) else np.full(len(keep), -1)
        parser.feed_selected(
            lines, (keep + start).tolist(), [b + start if b >= 0 else -1 for b in before.tolist()], int(chatter.sum())
        )
        if len(glog_idx):
            last = int(glog_idx[-1]) + start
            parser.last_time_from(lines[last], last + 1)
        if progress is not None:
            progress.update(len(chunk))
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


BACKGROUND_MIN_BYTES = 16 << 20  # below this, starting a process costs more than the overlap wins


class BackgroundParse:
    """`parse_files` in a spawned process, so that parsing a big log overlaps the seconds MLflow takes to
    import and open its store. `result()` returns the ParseResult or re-raises the parser's error."""

    def __init__(self, paths: list[str], **kwargs: Any):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a fresh interpreter: safe whatever threads the parent has
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_parse_worker, args=(send, [str(p) for p in paths], kwargs), daemon=True)
        self._proc.start()
        send.close()

    def result(self) -> ParseResult:
        try:
            ok, payload = self._recv.recv()
        except EOFError:
            raise RuntimeError(f"the parsing process died (exit code {self._proc.exitcode})") from None
        finally:
            self._proc.join()
        if not ok:
            raise payload
        return payload

    def cancel(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()


def _parse_worker(conn: Any, paths: list[str], kwargs: dict) -> None:
    try:
        conn.send((True, parse_files(paths, **kwargs)))
    except BaseException as exc:  # sent back and re-raised in the parent
        conn.send((False, exc))
    finally:
        conn.close()


def _order(files: list[ParsedFile]) -> list[ParsedFile]:
    """Restart order: by each file's first time when all have one, else as given."""
    if all(f.first_time() is not None for f in files):
        return sorted(files, key=lambda f: f.first_time())
    return list(files)


def build_result(files: list[ParsedFile], year_source: str, timezone: str = "UTC") -> ParseResult:
    import pandas as pd

    files = _order(files)
    cols: dict[str, list] = {k: [] for k in ("file", "line", "time", "own", "step", "metric", "value", "segment")}
    ckpts, counts, notes = [], {}, []
    params: dict[str, str] = {}
    flags: dict[str, str] = {}
    inputs: list[str] = []
    seg_offset = 0
    for n, f in enumerate(files):
        p = f.parser
        times = f.times
        cols["file"].extend([n] * len(p.line))
        cols["line"].extend(p.line)
        cols["time"].extend([times[i] if i >= 0 and times else None for i in p.ti])
        cols["own"].extend(p.own)
        cols["step"].extend(p.step)
        cols["metric"].extend(p.metric)
        cols["value"].extend(p.value)
        cols["segment"].extend(s + seg_offset for s in p.seg)
        for line, ti, step, uri, seg in p.checkpoints:
            ckpts.append((step, uri, times[ti] if ti >= 0 and times else None, p.source, line, seg + seg_offset))
        seg_offset += (max(p.seg) + 1) if p.seg else 1
        for k, v in p.counts.items():
            counts[k] = counts.get(k, 0) + v
        counts["lines"] = counts.get("lines", 0) + p.lines_read
        params.update(p.params)
        flags.update(p.flags)
        inputs.extend(x for x in p.input_files if x not in inputs)
        notes.extend(f.notes)
    df = pd.DataFrame(cols)
    df["time"] = pd.to_datetime(df["time"])
    df["time"] = df.groupby("file")["time"].bfill()  # absl lines before the file's first timed line
    df = df.sort_values(["metric", "step", "segment", "own", "line"], kind="stable")
    per_segment = len(df.drop_duplicates(["metric", "step", "segment"]))
    res = df.drop_duplicates(["metric", "step"], keep="last").copy()
    duplicates, superseded = len(df) - per_segment, per_segment - len(res)
    if res["time"].isna().any():  # a file without any timestamp: borrow the time of the same value elsewhere
        timed = df[df["own"] & df["time"].notna()].drop_duplicates(["metric", "step", "value"], keep="last")
        fill = res.merge(
            timed[["metric", "step", "value", "time"]],
            on=["metric", "step", "value"],
            how="left",
            suffixes=("", "_dup"),
        )["time_dup"].to_numpy()
        res["time"] = res["time"].fillna(pd.Series(fill, index=res.index))
        if res["time"].isna().any():
            notes.append("some points have no timestamp in any file; they get the ingest time")
    sources = [f.parser.source for f in files]
    table = (
        pd.DataFrame(
            {
                "source": [sources[i] for i in res["file"]],
                "line": res["line"].to_numpy(),
                "wall_time": _localize(res["time"], timezone),
                "step": res["step"].astype("int64").to_numpy(),
                "metric": res["metric"].to_numpy(),
                "value": res["value"].astype("float64").to_numpy(),
                "segment": res["segment"].to_numpy(),
            }
        )
        .sort_values(["metric", "step"], kind="stable")
        .reset_index(drop=True)
    )
    ck = pd.DataFrame(ckpts, columns=["step", "uri", "wall_time", "source", "line", "segment"])
    ck["wall_time"] = _localize(pd.to_datetime(ck["wall_time"]), timezone)
    ck = ck.sort_values(["segment", "line"], kind="stable").drop_duplicates("step", keep="last")
    restarts = restarts_of(table)
    finished = False
    data_files = [f for f in files if "train/loss" in f.parser.metric]
    if data_files:
        finished = data_files[-1].parser.finished_ti is not None
    all_times = [t for f in files for t in (f.times or []) if t is not None]
    start = _localize(pd.Series([min(all_times)]), timezone)[0] if all_times else None
    end = _localize(pd.Series([max(all_times)]), timezone)[0] if all_times else None
    return ParseResult(
        files,
        table,
        ck.sort_values("step").reset_index(drop=True),
        params,
        flags,
        inputs,
        counts,
        duplicates,
        superseded,
        restarts,
        finished,
        start,
        end,
        year_source,
        notes,
        timezone,
    )


def restarts_of(table: Any) -> list[dict]:
    """Where each segment after the first begins: its first loss step (after later segments won overlaps)."""
    loss = table[table["metric"] == "train/loss"]
    out = []
    for _, first in loss.sort_values(["segment", "step"]).groupby("segment").head(1).iterrows():
        if first["segment"] != loss["segment"].min():
            out.append(
                {
                    "step": int(first["step"]),
                    "wall_time": first["wall_time"],
                    "source": str(first["source"]),
                    "line": int(first["line"]),
                }
            )
    return out


def _localize(times: Any, timezone: str) -> Any:
    """Naive log times (the TPU host's clock, `--timezone`) -> UTC timestamps."""
    import pandas as pd

    times = pd.to_datetime(pd.Series(times).reset_index(drop=True))
    if times.dt.tz is None:
        try:
            times = times.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="shift_forward")
        except Exception as exc:  # an unknown zone name
            raise UserError(
                f"unknown time zone {timezone!r}: {exc}", fix="use an IANA name such as UTC or Europe/Berlin"
            ) from None
    return times.dt.tz_convert("UTC")
