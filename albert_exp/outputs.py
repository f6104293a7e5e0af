"""Outputs that replace an earlier good one only when complete.

    with staged_output(Path("runs/x/vocab")) as tmp:
        ...write everything into tmp...
    # now runs/x/vocab is the new output; had the block raised, the old one would be untouched

The new output is written into a fresh directory next to the final one (same file system, so the final
rename is atomic) and renamed over it only when the block succeeds. A crash, a kill or an error leaves the
previous output as it was (at worst a `.<name>.*.partial` directory beside it, removed on the next run's
success or by hand).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
