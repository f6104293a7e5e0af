"""One checkpoint/resume scheme for every training loop (pretraining steps, fine-tuning epochs).

`<output_dir>/checkpoints/step-00001000/` holds

    config.json, model.safetensors   the Hugging Face model (and whatever `extra_files` adds: the tokenizer)
    training_state.pt                optimiser, lr schedule, torch RNG states (torch.load(weights_only=True))
    trainer_state.json               the loop's own state, the resume `key`, the MLflow run id, the step

A checkpoint is written to `step-N.tmp` and renamed when complete, so a SIGKILL never leaves a half-written
`step-N`, and older checkpoints are pruned only after the new one exists; leftovers are removed on the next
start. A loop resumes only from a checkpoint whose key matches its own (albert_exp/identity.py) and logs into
the MLflow run recorded in it (`resume_point`). `<output_dir>/<best>/` holds a copy of the best model (a
stable path for the next stage), replaced atomically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

STEP_DIR = re.compile(r"^step-(\d+)$")
FLUSHED = "metrics_flushed"  # marker: this checkpoint's metrics reached the tracker
STATE_FILES = ("training_state.pt", "trainer_state.json", FLUSHED)  # not copied into the best model


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if d.is_dir() and STEP_DIR.match(d.name) and (d / "trainer_state.json").is_file()]
    return sorted(dirs, key=lambda d: int(STEP_DIR.match(d.name).group(1)))


def latest(output_dir: Path) -> Path | None:
    for leftover in (output_dir / "checkpoints").glob("*.tmp") if (output_dir / "checkpoints").is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)  # a save interrupted by a kill
    dirs = checkpoint_dirs(output_dir)
    return dirs[-1] if dirs else None


def resume_point(output_dir: Path, key: str) -> tuple[Path, dict] | None:
    """The last checkpoint and its trainer state, if it was written under `key`; else None (start afresh)."""
    ckpt = latest(output_dir)
    if ckpt is None:
        return None
    state = load_trainer_state(ckpt)
    if state.get("key") != key:
        print(f"not resuming from {ckpt}: it was written with other settings, inputs or code")
        return None
    return ckpt, state


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_weights(model, directory: Path) -> None:
    """`model.save_pretrained(directory)` (safetensors); an I/O failure is an OSError naming the file, as any other
    write's (safetensors reports it as `SafetensorError: ... I/O error: No space left on device (os error 28)`)."""
    try:
        model.save_pretrained(str(directory))
    except Exception as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None or isinstance(e, OSError):
            raise
        errno_ = int(code.group(1))
        raise OSError(errno_, os.strerror(errno_), str(directory / "model.safetensors")) from e


def save(
    output_dir: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    trainer_state: dict,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    root = output_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_weights(getattr(model, "_orig_mod", model), tmp)  # (torch.compile wraps the model)
        if extra_files is not None:
            extra_files(tmp)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
            tmp / "training_state.pt",
        )
        state = {**trainer_state, "step": step}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True, default=str))
        for f in tmp.iterdir():  # durable before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException:  # a full disk, a kill: no half-written checkpoint stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load_training_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=True)


def load_trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


def restore(ckpt: Path, optimizer, scheduler) -> None:
    """Optimiser, schedule and RNG states of a checkpoint (the model is loaded from its directory)."""
    ts = load_training_state(ckpt)
    optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    set_rng_state(ts["rng"])


def update_best(output_dir: Path, ckpt: Path, name: str = "best") -> Path:
    """Copy the model files of `ckpt` (not the training state) to <output_dir>/<name>, atomically replaced."""
    best = output_dir / name
    tmp = output_dir / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ckpt.iterdir():
        if f.is_file() and f.name not in STATE_FILES:
            shutil.copy2(f, tmp / f.name)
    (tmp / "best_step.json").write_text(json.dumps({"step": int(STEP_DIR.match(ckpt.name).group(1))}))
    old = output_dir / f"{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)
    return best


def ensure_best(output_dir: Path, best_step: int | None, name: str = "best") -> None:
    """After a kill between saving a checkpoint and copying it to <name>/, finish the copy on resume."""
    if best_step is None:
        return
    marker = output_dir / name / "best_step.json"
    if marker.is_file() and json.loads(marker.read_text())["step"] == best_step:
        return
    ckpt = output_dir / "checkpoints" / f"step-{best_step:08d}"
    if ckpt.is_dir():
        update_best(output_dir, ckpt, name)


def prune(output_dir: Path, keep: int, best_step: int | None) -> list[Path]:
    """Delete all but the last `keep` checkpoints and the best one. Returns the deleted dirs."""
    dirs = checkpoint_dirs(output_dir)
    removed = []
    for d in dirs[:-keep]:
        if best_step is not None and d.name == f"step-{best_step:08d}":
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed
