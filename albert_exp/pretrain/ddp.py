"""Data-parallel pretraining under torchrun: one code path for 1..N processes (nanochat's way).

    albert-exp pretrain --config cfg.yaml                                    # one process, as always
    torchrun --nproc-per-node 8 -m albert_exp pretrain --config cfg.yaml     # 8 GPUs (NCCL), or 8 CPU procs (Gloo)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD:29500 \\
        -m albert_exp pretrain --config cfg.yaml                             # 2 nodes x 8 GPUs

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a world of one and nothing changes.

- Batch: `pretrain.batch_size` is the GLOBAL batch (the batch-scaling rule applies to it, as before);
  each rank runs `gradient_accumulation_steps` micro-batches of batch / (world x accumulation) per step.
  A world size that does not divide it is a user error.
- Data: every rank reads a disjoint part of one global sequence of micro-batches, so a global step holds
  the same examples whatever the world size: dynamic data by index (data.DynamicDataset), TFRecords by
  stream (rank r plays streams r, r + W, ... of `num_workers` streams, which the world size must divide).
- Gradients: torch DistributedDataParallel (bucketed all-reduce; no_sync on all but the last micro-batch of
  a step). ALBERT shares one layer's weights across all layers, so its gradients are complete only at the
  end of the backward pass and there is little to overlap; the all-reduce is of ~12M parameters.
- Losses: each rank's are its share of the global batch's (normalised by the global batch's masked positions
  and sequences: loop.Share), so DDP's gradient average and the logged losses' average over ranks are the
  global batch's, as one process with accumulation computes them.
- Rank 0 alone evaluates, logs to MLflow (one run per training), writes checkpoints and results.json.
  Before each checkpoint the ranks' data positions are gathered into rank 0's, so a resume restores every
  rank. Resuming with another world size is refused: the checkpoint records it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from albert_exp.errors import UserError


@dataclass
class Dist:
    """This process's place in the job (a world of one without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def init(cls, device: str = "auto", where: str = "device") -> Dist:
        """From torchrun's environment: a process group (NCCL on GPUs, Gloo on CPU) when WORLD_SIZE > 1. `device`:
        auto (CUDA when present, as pretraining runs), cpu or cuda (albert_exp/devices.py; fine-tuning's setting).
        Inside ranks.alone() (rank 0 computing a stage for every rank) this is a world of one."""
        from albert_exp import ranks
        from albert_exp.devices import resolve_device

        world = ranks.world()
        rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
        local = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0
        dev = resolve_device(device, where, local)
        cuda = dev.type == "cuda"
        if cuda:
            torch.cuda.set_device(dev)
        global _CURRENT
        _CURRENT = cls(rank, world, local, dev)
        if world > 1:
            import atexit

            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo", device_id=dev if cuda else None)
                atexit.register(_CURRENT.close)
            elif not cuda and dist.get_backend() == "nccl":  # ranks made the group: NCCL wherever CUDA is
                raise UserError(
                    "a CPU run under torchrun on a host with CUDA: the process group is NCCL, which has no CPU "
                    "collectives",
                    where=where,
                    fix="use the GPUs (auto or cuda), or hide them for this job: CUDA_VISIBLE_DEVICES=''",
                )
        return _CURRENT

    def close(self) -> None:
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def check(self, pc, static_streams: int | None, where: str) -> None:
        """The global batch must split evenly over ranks and accumulation; static data over ranks' streams."""
        parts = self.world * pc.gradient_accumulation_steps
        if pc.batch_size % parts:
            raise UserError(
                f"batch_size {pc.batch_size} is not divisible by world size {self.world} x "
                f"gradient_accumulation_steps {pc.gradient_accumulation_steps}",
                where=where,
                fix="pick a batch size (the global batch) that world size x accumulation divides",
            )
        if static_streams is not None and static_streams % self.world:
            raise UserError(
                f"TFRecord input is read as num_workers={static_streams} streams, which {self.world} ranks "
                "cannot share evenly",
                where=where,
                fix=f"set pretrain.num_workers to a multiple of {self.world} (or use pretraining_data.mode: dynamic)",
            )

    def check_resume(self, saved: dict, where: str) -> None:
        then = int(saved.get("world_size", 1))
        if then != self.world:
            raise UserError(
                f"the checkpoint was written by {then} process(es), this run has {self.world}",
                where=where,
                fix=f"resume with --nproc-per-node/--nnodes giving {then} processes in all, or start a new "
                "pretrain.output_dir",
            )

    def wrap(self, model, losses, encoder=None):
        """(forward(batch, *args) -> losses(model, batch, encoder, *args), no_sync(skip: bool) context): through
        DDP when world > 1. `losses`: the loop's loss function (passed in: this module is below the loop)."""
        if self.world == 1:
            return (lambda batch, *args: losses(model, batch, encoder, *args)), (lambda skip: contextlib.nullcontext())
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(_Losses(model, losses, encoder), device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        return ddp, (lambda skip: ddp.no_sync() if skip else contextlib.nullcontext())

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor summed over ranks (in place; on the device, so no host sync)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalars over ranks (identical on every rank afterwards)."""
        if self.world == 1:
            return values
        t = self.mean_tensor(torch.tensor(list(values.values()), dtype=torch.float64, device=self.device))
        return dict(zip(values, t.tolist(), strict=True))

    def mean_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor averaged over ranks (identical on every rank afterwards), on the device: one all-reduce."""
        return self.sum(t) / self.world if self.world > 1 else t

    def gather_streams(self, positions: list, corrupt: list, static: bool) -> tuple[list, list]:
        """Every rank's data positions merged for rank 0's checkpoint. Static: entry s comes from rank s % W,
        which reads stream s. Dynamic: entries are rank 0's loader workers' (a cursor that only speeds up the
        resume's seek; rank 0's is at or before every rank's next index), so there is nothing to gather."""
        if self.world == 1 or not static:
            return positions, corrupt
        import torch.distributed as dist

        parts: list = [None] * self.world
        dist.all_gather_object(parts, (positions, corrupt))
        return (
            [parts[s % self.world][0][s] for s in range(len(positions))],
            [parts[s % self.world][1][s] for s in range(len(corrupt))],
        )


_CURRENT: Dist | None = None


def current() -> Dist:
    """The Dist of this process (set by Dist.init in pretrain.run), a world of one before that."""
    return _CURRENT or Dist()


class _Losses(torch.nn.Module):
    """The model's training losses as one module, so DDP sees the forward it must synchronise."""

    def __init__(self, model, losses, encoder=None):
        super().__init__()
        self.model, self._losses = model, losses
        self._encoder = [encoder]  # a list: not registered twice (torch.compile wraps the same parameters)

    def forward(self, batch: dict, *args) -> dict:
        return self._losses(self.model, batch, self._encoder[0], *args)
