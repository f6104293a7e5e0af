"""Years for glog times, which have none: per file, from full-date lines, `--year`, a date in the file name or
the file's modification time (see parse.py's docstring); monotonic inside a file across new year.

Times are (month, day, seconds of day, year or 0) tuples from grammar.FileParser.timeline.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

FILE_NAME_DATE = re.compile(r"(20\d\d)-?(0[1-9]|1[0-2])-?([0-3]\d)")
NEW_YEAR_GAP_DAYS = 30  # a date going back by more than this inside one file means the year turned


def _doy(month: int, day: int) -> int:
    return (month - 1) * 31 + day


def year_offsets(timeline: list[tuple[int, int, float, int]], prev_doy: int | None = None, k: int = 0) -> list[int]:
    """Years added since the first entry: +1 whenever the date goes back by more than a month (new year)."""
    out = []
    for month, day, _, _ in timeline:
        cur = _doy(month, day)
        if prev_doy is not None and cur < prev_doy - NEW_YEAR_GAP_DAYS:
            k += 1
        prev_doy = cur
        out.append(k)
    return out


def to_datetime(year: int, entry: tuple[int, int, float, int]) -> datetime | None:
    month, day, sod, _ = entry
    try:
        return datetime(year, month, day) + timedelta(seconds=sod)
    except ValueError:  # Feb 29 in a year that has none: the year guess cannot be right
        return None


def nearest_base(entry: tuple[int, int, float, int], k: int, ref: datetime) -> int:
    """The base year putting `entry` (k years after the base) nearest to `ref`."""
    best = None
    for year in (ref.year - 1, ref.year, ref.year + 1):
        dt = to_datetime(year, entry)
        if dt is not None and (best is None or abs(dt - ref) < best[0]):
            best = (abs(dt - ref), year - k)
    return best[1] if best else ref.year


def latest_base_not_after(entry: tuple[int, int, float, int], k: int, limit: datetime) -> int:
    """The base year putting `entry` at or before `limit` (a modification time, or now), as late as possible."""
    for year in (limit.year, limit.year - 1):
        dt = to_datetime(year, entry)
        if dt is not None and dt <= limit + timedelta(days=1):  # a day of slack for time zones
            return year - k
    return limit.year - 1 - k


def assign_years(files: list[Any], year: int | None, now: datetime | None = None) -> str:
    """Give every file a base year (see the module docstring); returns where the years came from."""
    for f in files:
        f.offsets = year_offsets(f.parser.timeline)
        anchor = next((i for i, e in enumerate(f.parser.timeline) if e[3]), None)
        f.base_year = None if anchor is None else f.parser.timeline[anchor][3] - f.offsets[anchor]
    timed = [f for f in files if f.parser.timeline]
    if not timed:
        return "no timestamps in the log"
    source, ref = _reference(timed, year, now)
    for f in timed:
        if f.base_year is None:
            f.base_year = nearest_base(f.parser.timeline[0], 0, ref) if ref else datetime.now().year
        f.times = [to_datetime(f.base_year + k, e) for k, e in zip(f.offsets, f.parser.timeline, strict=True)]
    return source


def _reference(timed: list[Any], year: int | None, now: datetime | None) -> tuple[str, datetime | None]:
    """(where the year comes from, the first time of the file that decides it); sets that file's base year.
    In order: a file's own full dates, --year (the first file), a date in a file name, the last file's
    modification time (or `now` for a followed log): its last line cannot be later."""
    anchored = [f for f in timed if f.base_year is not None]
    if anchored:
        first, source = anchored[0], "full-date lines in the log"
    elif year is not None:
        first, source = timed[0], "--year"
        first.base_year = year
    elif named := next(((f, m) for f in timed if (m := FILE_NAME_DATE.search(Path(f.path).name))), None):
        (first, m), source = named, "date in the file name"
        first.base_year = nearest_base(first.parser.timeline[0], 0, datetime(*map(int, m.groups())))
    else:
        first = timed[-1]
        limit = now or datetime.fromtimestamp(Path(first.path).stat().st_mtime)
        source = "current time" if now else "file modification time"
        first.base_year = latest_base_not_after(first.parser.timeline[-1], first.offsets[-1], limit)
    return source, to_datetime(first.base_year + first.offsets[0], first.parser.timeline[0])
