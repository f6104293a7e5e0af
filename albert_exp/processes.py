"""Child processes that end with the process that started them."""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent(parent_pid: int) -> None:
    """Call first thing in a child process (a pool initializer, a Process target): the child gets SIGKILL when
    the process that started it dies (Linux PR_SET_PDEATHSIG), so a `kill -9` of the command leaves no process
    running on. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)
