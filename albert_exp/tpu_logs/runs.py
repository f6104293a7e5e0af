"""Which run holds which log files: identity, --append targets, files that grew, and the run's earlier table.

Identity: a run carries `tpu_logs.digest` (sha256 over the sorted sha256 of its files, and over `--year` and
`--timezone` when given: they change the times) and `tpu_logs.file_digests`. The same files with the same
options find their run; `--append` adds files the run does not have yet; a file that grew since (its start
is a file of the run) continues that file's attempt and replaces its digest. `merge_earlier` puts the run's
earlier table before the new files' by the overlap rule (tables.OVERLAP_RULE: the new files' values win).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError

STAGE = "tpu-logs"
TAG_DIGEST, TAG_FILES, TAG_COMPLETE = "tpu_logs.digest", "tpu_logs.file_digests", "tpu_logs.complete"
DEFAULT_EXPERIMENT = "tpu-pretraining"
ARTIFACT_DIR = "tpu_logs"


@dataclass
class LogFile:
    path: str
    sha256: str
    bytes: int

    @property
    def short(self) -> str:
        return self.sha256[:16]


def log_files(paths: list[str]) -> list[LogFile]:
    """The files as given, each once (the same file twice, or a byte-identical copy, counts once)."""
    from albert_exp.digest import file_digest

    out: dict[str, LogFile] = {}
    for p in paths:
        if not Path(p).is_file():
            raise UserError("log file not found", where=str(p), fix="check the path")
        digest = file_digest(p)
        out.setdefault(digest, LogFile(str(p), digest, Path(p).stat().st_size))
    return list(out.values())


def run_digest(short_digests: list[str], year: int | None = None, timezone: str = "UTC") -> str:
    options = "" if year is None and timezone == "UTC" else f";year={year};timezone={timezone}"
    return hashlib.sha256((",".join(sorted(set(short_digests))) + options).encode()).hexdigest()


def to_ms(times: Any) -> Any:
    """UTC timestamps (pandas) -> epoch milliseconds; missing times become now."""
    import pandas as pd

    s = pd.Series(pd.to_datetime(pd.Series(times), utc=True)).dt.tz_localize(None)
    ms = s.to_numpy(dtype="datetime64[ms]").astype("int64")
    ms[s.isna().to_numpy()] = int(time.time() * 1000)
    return ms


def epoch_ms(t: Any) -> int | None:
    return None if t is None else int(to_ms([t])[0])


# ---------------------------------------------------------------------------------------------------------
# Which run, which files


@dataclass
class Earlier:
    """What an --append target already holds (from its artifacts)."""

    table: Any  # the parsed table as logged
    restarts: list[dict]
    files: list[dict]  # path, sha256, bytes
    grown: dict[str, str] = field(default_factory=dict)  # new file's path -> the recorded short digest it extends
    overlaps: Any = None  # the superseded values the run lists (its overlaps.csv)


@dataclass
class Plan:
    run: Any  # tracking.RunRecord or None (create one)
    files: list[LogFile]  # the files to parse
    digests: list[str]  # the run's file digests (short) once ingested
    earlier: Earlier | None = None
    unchanged: str | None = None  # why nothing needs doing


def plan(
    store: Any,
    files: list[LogFile],
    *,
    append: bool,
    run_id: str | None,
    run_name: str | None,
    year: int | None,
    timezone: str,
) -> Plan:
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if append or (run_id and not env_run):
        return _plan_append(store, files, run_id, run_name)
    digests = [f.short for f in files]
    found = store.find({TAG_DIGEST: run_digest(digests, year, timezone)})
    if found is not None and found.tags.get(TAG_COMPLETE) == "true":
        return Plan(found, [], digests, unchanged="these files were ingested before")
    return Plan(found or (store.get(env_run, "MLFLOW_RUN_ID") if env_run else None), files, digests)


def append_target(store: Any, run_id: str | None, run_name: str | None) -> Any:
    """The run --append (or --run-id) adds to: the given one, else the latest tpu-logs run (of run_name)."""
    run = store.get(run_id) if run_id else store.find({"stage": STAGE}, run_name)
    if run is None:
        raise UserError(
            "--append found no earlier tpu-logs run" + (f" named {run_name!r}" if run_name else ""),
            fix="ingest the first files without --append, or pass --run-id",
        )
    return run


def _plan_append(store: Any, files: list[LogFile], run_id: str | None, run_name: str | None) -> Plan:
    run = append_target(store, run_id, run_name)
    known = [d for d in run.tags.get(TAG_FILES, "").split(",") if d]
    new = [f for f in files if f.short not in known]
    if not new:
        return Plan(run, [], known, unchanged="every file is already in the run")
    earlier = earlier_of(run, new)
    return Plan(run, new, run_files(known, earlier, new)[0], earlier)


def earlier_of(run: Any, files: list[LogFile]) -> Earlier:
    """What the run holds, and which of `files` continue a file of the run (grown since, or the same)."""
    earlier = _earlier(run)
    known = [d for d in run.tags.get(TAG_FILES, "").split(",") if d]
    for f in files:
        if (old := f.short if f.short in known else _grown_from(f, earlier.files)) is not None:
            earlier.grown[f.path] = old
    return earlier


def run_files(known: list[str], earlier: Earlier | None, files: list[LogFile]) -> tuple[list[str], list[dict]]:
    """The run's file digests and file records once `files` are in it (a grown file replaces its start)."""
    grown = set(earlier.grown.values()) if earlier else set()
    digests = list(dict.fromkeys([d for d in known if d not in grown] + [f.short for f in files]))
    records = {r["sha256"]: r for r in [*(earlier.files if earlier else []), *(vars(f) for f in files)]}
    return digests, [r for sha, r in records.items() if sha[:16] in digests]


def _earlier(run: Any) -> Earlier:
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        table = run.download(f"{ARTIFACT_DIR}/table.parquet", tmp)
        restarts = run.download(f"{ARTIFACT_DIR}/restarts.json", tmp)
        files = run.download(f"{ARTIFACT_DIR}/files.json", tmp)
        overlaps = run.download(f"{ARTIFACT_DIR}/overlaps.csv", tmp)
        listed = pd.read_csv(overlaps) if overlaps and overlaps.stat().st_size else None
        return Earlier(
            pd.read_parquet(table) if table else None,
            json.loads(restarts.read_text()) if restarts else [],
            json.loads(files.read_text()) if files else [],
            # (a run ingested before the latest attempt won lists other columns: its list starts afresh)
            overlaps=listed if listed is not None and "value_superseded" in listed.columns else None,
        )


def _listed(earlier: Any, new_files: Any, merged: Any, table: Any) -> Any:
    """Every superseded value of the run: the ones it listed, the new files' own and those the merge found, each
    beside the value its step holds now (a later attempt may have superseded that one too)."""
    import pandas as pd

    kept = ["value", "source", "line"]
    listed = pd.concat([x for x in (earlier, new_files, merged) if x is not None], ignore_index=True)
    now = table[["metric", "step", *kept]]
    listed = listed.drop(columns=kept).merge(now, on=["metric", "step"], how="left")
    listed = listed.drop_duplicates(["metric", "step", "source_superseded", "line_superseded"])
    return listed[[*now.columns, "value_superseded", "source_superseded", "line_superseded"]].reset_index(drop=True)


def _grown_from(f: LogFile, recorded: list[dict]) -> str | None:
    """The short digest of a file of the run that `f` starts with (the same log, grown since), if any."""
    for old in recorded:
        size = old.get("bytes")
        if size and size < f.bytes:
            with open(f.path, "rb") as fh:
                if hashlib.sha256(fh.read(size)).hexdigest() == old["sha256"]:
                    return old["sha256"][:16]
    return None


def merge_earlier(result: Any, earlier: Earlier) -> None:
    """--append: the new files' attempts come after the run's (a grown file continues its own attempt), so at a
    step both hold the new files' value wins (OVERLAP_RULE) and the run's is listed as superseded. Updates
    result.table, .overlaps and .restarts."""
    import pandas as pd

    old, new = earlier.table, result.table.copy()
    if old is None or old.empty:
        return
    grown = {Path(p).name for p in earlier.grown}
    is_grown = new["source"].isin(grown)
    first_old_seg = old.groupby("source")["segment"].min()
    base = int(old["segment"].max()) + 1
    new.loc[~is_grown, "segment"] += base - int(new.loc[~is_grown, "segment"].min()) if (~is_grown).any() else 0
    if is_grown.any():  # segments of a grown file continue where the run has them
        g = new[is_grown]
        new.loc[is_grown, "segment"] = g["segment"] - g["segment"].min() + g["source"].map(first_old_seg).fillna(base)
    both = new.merge(old[["metric", "step", "value", "source", "line"]], on=["metric", "step"], suffixes=("", "_old"))
    same = (both["source"] == both["source_old"]) & (both["line"] == both["line_old"])  # a grown file's old part
    over = both[~same]
    overlaps = pd.DataFrame(
        {
            "metric": over["metric"],
            "step": over["step"],
            "value": over["value"],
            "source": over["source"],
            "line": over["line"],
            "value_superseded": over["value_old"],
            "source_superseded": over["source_old"],
            "line_superseded": over["line_old"],
        }
    )
    table = pd.concat([old, new], ignore_index=True).drop_duplicates(["metric", "step"], keep="last")
    result.table = table.sort_values(["metric", "step"], kind="stable").reset_index(drop=True)
    result.overlaps = _listed(earlier.overlaps, result.overlaps, overlaps, result.table)
    old_lines = old.groupby("source")["line"].max()
    fresh = [r for r in result.restarts if r["line"] > old_lines.get(r["source"], 0)]
    boundary = []
    loss = new[(new["metric"] == "train/loss") & ~is_grown].sort_values(["segment", "step"])
    if len(loss):  # where the first new attempt begins
        b = loss.iloc[0]
        boundary = [
            {"step": int(b["step"]), "wall_time": b["wall_time"], "source": b["source"], "line": int(b["line"])}
        ]
    result.restarts = [*earlier.restarts, *boundary, *fresh]
