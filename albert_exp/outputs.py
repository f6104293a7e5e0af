"""Outputs that replace an earlier good one only when complete: stage outputs (`StageOutput`, one directory per
identity under a link) and plain command outputs (`staged_output`).

    with staged_output(Path("runs/x/vocab")) as tmp:
        ...write everything into tmp...
    # now runs/x/vocab is the new output; had the block raised, the old one would be untouched

The new output is written into a fresh directory next to the final one (same file system, so the final
rename is atomic) and renamed over it only when the block succeeds. A crash, a kill or an error leaves the
previous output as it was (at worst a `.<name>.*.partial` directory beside it, removed on the next run's
success or by hand).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A fresh directory next to `out` to write into; renamed to `out` only if the block succeeds (the old
    `out`, if any, is then removed). On any failure the staging directory goes and `out` is left as it was."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise UserError(
            f"cannot write there ({exc.strerror})", where=str(parent), fix="choose a writable output directory"
        ) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; --out gets the usual permissions
    if out.exists() and not out.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError("exists and is not a directory", where=str(out), fix="give a directory")
    try:
        yield tmp
        old = parent / f"{tmp.name}.old"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise UserError(
            f"cannot write the output ({exc.strerror})",
            where=str(out),
            fix="free disk space or choose another output directory",
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class StageOutput:
    """Where a stage with identity `key` writes, under the link `link` (e.g. <workdir>/pretrain):

        <link> -> <name>@<key>          a symlink: what downstream stages and users open
        <name>@<key>/                   a complete output (results.json names its key); never modified again
        <name>@<key>.partial/           a computation in progress: a rerun with the same key resumes it

    The stage computes into `work` and `commit()` renames it when complete, then moves the link. A failed or
    killed rerun leaves the previous output and the link untouched; outputs of other keys keep their paths
    (which runs and results record), so they stay loadable. A path at `link` that this scheme did not make (a
    user's file or directory, a link elsewhere) is never moved or deleted: `check()` refuses it."""

    def __init__(self, link: Path, key: str) -> None:
        self.link, self.key = Path(link).absolute(), key  # results record absolute paths: stable across cwd
        self.done = self.link.parent / f"{self.link.name}@{key}"
        self.work = self.link.parent / f"{self.link.name}@{key}.partial"

    def ours(self) -> bool:
        """Whether `link` is free or is a link this scheme made (to `<name>@<identity>` beside it)."""
        if not self.link.is_symlink():
            return not self.link.exists()
        target = os.readlink(self.link)
        return re.fullmatch(re.escape(self.link.name) + r"@[0-9a-f]{20}", target) is not None

    def check(self, where: str) -> None:
        """Refuse a stage output path that holds something the project did not create."""
        if not self.ours():
            what = (
                "a link to " + os.readlink(self.link)
                if self.link.is_symlink()
                else ("a directory" if self.link.is_dir() else "a file")
            )
            raise UserError(
                f"the output path is {what} that albert-exp did not create; it is left untouched",
                where=f"{self.link} ({where})",
                fix="choose another output path (or move that one away yourself)",
            )

    def complete(self) -> dict[str, Any] | None:
        """results.json of a complete output with this key, or None."""
        path = self.done / "results.json"
        if not path.is_file():
            return None
        results = json.loads(path.read_text())
        return results if results.get("key") == self.key else None

    def start(self, fresh: bool = False) -> Path:
        """The work directory (kept from a killed run with the same key, for resuming, unless `fresh`)."""
        if fresh:
            shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        return self.work

    def commit(self) -> Path:
        """Rename the work directory into place and point the link at it."""
        if self.done.exists():  # a forced rerun of the same key: the earlier output stays, renamed
            os.replace(self.done, self.done.with_name(f"{self.done.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"))
        os.replace(self.work, self.done)
        self.point()
        return self.done

    def point(self) -> None:
        """Make the link name this output (atomically: a new symlink renamed over the old one)."""
        self.check("stage output")
        tmp = self.link.with_name(f".{self.link.name}.link-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.done.name)
        os.replace(tmp, self.link)


def producing_run(path: Path) -> str | None:
    """The run id recorded in the results.json of the stage output that holds `path` (None: not a stage output)."""
    p = Path(path).resolve()
    for d in [p, *p.parents] if p.is_dir() else list(p.parents):
        results = d / "results.json"
        if results.is_file():
            try:
                data = json.loads(results.read_text())
            except (OSError, ValueError):
                return None
            return data.get("run_id") or data.get("mlflow_run_id")
    return None
