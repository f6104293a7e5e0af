"""One command at a time on a workdir: an advisory lock file, `<workdir>/.albert-exp.lock`.

    with workdir_lock(cfg.root, command="main"):         # a second `main` on the same workdir stops at once
        ...
    with workdir_lock(cfg.root, command="tune", shared=True):   # search workers share a workdir with each other

A command that computes stage outputs holds the lock exclusively: two of them on one workdir would race on the
same `.partial` directories and links (one crashed, the other left a dangling link). A second command stops
with one line naming the holder (host, pid, command, since). The lock is a POSIX record lock: the kernel
releases it when the holder exits, however it exits (a killed process leaves no lock, and the data loader workers
it forked never hold it). The processes a command starts for its own stages (`main --jobs`) and `torchrun` ranks
other than 0 work under the lock it holds (ALBERT_EXP_WORKDIR_LOCK, RANK).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from albert_exp.errors import UserError

FILE = ".albert-exp.lock"
INHERITED = "ALBERT_EXP_WORKDIR_LOCK"  # the lock file a parent command holds for this process


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"`albert-exp {h.get('command', '?')}` (pid {h.get('pid')} on {h.get('host')}, since {h.get('since')})"


@contextlib.contextmanager
def workdir_lock(root: Path, command: str, shared: bool = False) -> Iterator[None]:
    """Hold the workdir's lock for the block (a no-op where the caller's parent holds it already)."""
    path = (Path(root) / FILE).absolute()
    if os.environ.get(INHERITED) == str(path) or int(os.environ.get("RANK", "0")) > 0:
        yield  # a child of the holder, or a torchrun rank whose rank 0 holds it
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    except OSError as exc:
        raise UserError(
            f"cannot write there ({exc.strerror})",
            where=str(path.parent),
            fix="write the outputs elsewhere (--workdir)",
        ) from None
    with fh:
        try:
            # a POSIX record lock (lockf), not flock: processes this one forks (data loader workers) do not
            # inherit it, so the lock dies with its holder even if an orphaned worker lingers
            fcntl.lockf(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"the workdir is in use by {_holder(path)}",
                where=str(path.parent),
                fix="wait for it to finish (or stop it), or give this command another --workdir",
            ) from None
        fh.seek(0)  # the holder's name, for the next command's message
        fh.truncate()
        info = {
            "command": command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        fh.write(json.dumps(info))
        fh.flush()
        previous = os.environ.get(INHERITED)
        os.environ[INHERITED] = str(path)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(INHERITED, None)
            else:
                os.environ[INHERITED] = previous
