"""This process's rank under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK), and the few collective calls the
executor needs: rank 0 decides and writes, the other ranks wait for it and read what it decided.

Without torchrun this is a world of one: every call is free and imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

_ALONE = [False]  # inside `alone()`: rank 0 works on its own, the others wait for its result


def world() -> int:
    return 1 if _ALONE[0] else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Rank 0 works as a world of one (no collective call inside may wait for the other ranks)."""
    _ALONE[0] = True
    try:
        yield
    finally:
        _ALONE[0] = False


def _group() -> Any:
    """The default process group (NCCL on GPUs, Gloo on CPU), created once; pretraining's Dist reuses it."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device(f"cuda:{local}") if cuda else None)
        import atexit

        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return dist


def barrier() -> None:
    if world() > 1:
        _group().barrier()


def share(value: Any) -> Any:
    """Rank 0's `value` on every rank (a decision: reuse or compute, which key, or an error to raise)."""
    if world() == 1:
        return value
    box = [value]
    _group().broadcast_object_list(box, src=0)
    return box[0]
