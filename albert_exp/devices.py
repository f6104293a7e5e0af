"""Where a model runs and in which precision: one answer for fine-tuning, evaluation, predict and serving.

    device = resolve_device("auto", where="finetune.device")        # CUDA when the host has it, else the CPU
    precision = resolve_precision("auto", device, where="finetune.precision")  # bf16 / fp16 / fp32
    with autocast(device, precision): logits = model(**batch).logits

`auto` precision is bf16 on a card that computes it natively (Ampere and later), fp16 with a gradient scaler on
one that does not (the reference recipe's T4), fp32 on the CPU. A choice the host cannot honour (`cuda`
without a CUDA device, fp16 on the CPU, bf16 on a card without it) is a UserError: one line, exit 2.

`OnDevice` lets code that builds its batches on the CPU (albert_exp/windows.py: evaluation, predict, the served
model) run a model on the device: inputs go to the device, the forward runs under autocast, the logits come
back as float32 on the CPU (that code reads them there anyway). Shipped with the served model (serving.MODULES).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from albert_exp.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(choice: str = "auto", where: str = "device", index: int | None = None) -> torch.device:
    """`auto`: cuda when torch sees a CUDA device, else cpu. `index`: the CUDA device (torchrun's LOCAL_RANK)."""
    if choice not in DEVICES:
        raise UserError(f"unknown device {choice!r}", where=where, fix=f"give one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise UserError(
            "device cuda asked for, but this machine has no CUDA device (torch.cuda.is_available() is False)",
            where=where,
            fix="set it to auto (the CPU here) or cpu, or run on a host with an NVIDIA GPU and a CUDA build of torch",
        )
    if choice == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device() if index is None else index)


def bf16_native(device: torch.device) -> bool:
    """Whether the card computes bf16 itself (not emulated: a T4 would run it slower than fp32)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(choice: str, device: torch.device, where: str = "precision") -> str:
    """fp32, bf16 or fp16 (the latter with a GradScaler in training) for `choice` on `device`."""
    if choice not in PRECISIONS:
        raise UserError(f"unknown precision {choice!r}", where=where, fix=f"give one of {', '.join(PRECISIONS)}")
    if choice == "auto":
        return "fp32" if device.type == "cpu" else "bf16" if bf16_native(device) else "fp16"
    if choice == "fp16" and device.type == "cpu":
        raise UserError("fp16 needs a CUDA device", where=where, fix="use fp32 or bf16 on the CPU (or auto)")
    if choice == "bf16" and device.type == "cuda" and not bf16_native(device):
        raise UserError(
            f"{torch.cuda.get_device_name(device)} has no native bf16",
            where=where,
            fix="use fp16 (with a gradient scaler) or auto",
        )
    return choice


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> Any:
    """A torch.amp GradScaler for fp16 (its small gradients would underflow), else None."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


class OnDevice(torch.nn.Module):
    """`model` on `device` for callers that feed CPU tensors and read CPU logits (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str = "fp32"):
        super().__init__()
        self.model = model.to(device)
        self.device, self.precision = device, precision

    def forward(self, **inputs: torch.Tensor) -> Any:
        moved = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        with autocast(self.device, self.precision):
            out = self.model(**moved)
        out.logits = out.logits.float().cpu()
        return out


def on_device(model: torch.nn.Module, choice: str = "auto", where: str = "device") -> torch.nn.Module:
    """`model` as it runs inference on `choice` (auto: CUDA when present): as it is on the CPU, else OnDevice
    with bf16 autocast where the card has it (fp32 weights either way; fp16 inference is not worth its risk)."""
    device = resolve_device(choice, where)
    if device.type == "cpu":
        return model
    return OnDevice(model, device, "bf16" if bf16_native(device) else "fp32")


def parallel_slots(threads: int) -> int:
    """How many stage or trial processes this machine runs side by side: one per visible GPU, else the CPU cores
    divided by each process's torch threads (0: torch takes every core, so one at a time)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        return gpus
    return max(1, (os.cpu_count() or 1) // threads) if threads else 1


def side_by_side_env(slot: int, processes: int) -> dict[str, str]:
    """The environment of process `slot` of `processes` run side by side (stages of `main --jobs`, the search's
    trial workers, the curve's points): its own GPU where the host has GPUs, and its share of the CPU cores as
    OMP_NUM_THREADS, torch's default thread count (a section's explicit torch_threads still wins; a user's
    OMP_NUM_THREADS is kept). Without the share, N processes that each take every core run N x cores spinning
    OpenMP threads: on 2 cores two toy fine-tunings took 2 min an epoch instead of 12 s."""
    env: dict[str, str] = {}
    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        env["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)]
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, processes)))
    return env


def share_cores(processes: int) -> None:
    """This process's torch threads: the share side_by_side_env gives each of `processes` run side by side."""
    threads = side_by_side_env(0, processes).get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
