"""Checkpoints: `<output_dir>/checkpoints/step-00001000/` holds

    config.json, model.safetensors   the Hugging Face AlbertForPreTraining (finetune starts from this dir)
    training_state.pt                optimiser, lr schedule, torch RNG states (torch.load(weights_only=True))
    trainer_state.json               step, data-stream positions, plateau state, best, MLflow run id, config

A checkpoint is written to `step-N.tmp` and renamed when complete, so a SIGKILL never leaves a half-written
`step-N`; leftovers are removed on the next start. The last `keep` checkpoints are kept plus the best one,
and `<output_dir>/best/` holds a copy of the best model (a stable path for `finetune` and `convert`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

STEP_DIR = re.compile(r"^step-(\d+)$")


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


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(output_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict) -> Path:
    root = output_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    unwrapped = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    unwrapped.save_pretrained(str(tmp))  # safetensors
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
        tmp / "training_state.pt",
    )
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, sort_keys=True, default=str))
    for f in tmp.iterdir():  # durable before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load_training_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=True)


def load_trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


def update_best(output_dir: Path, ckpt: Path) -> Path:
    """Copy the model files of `ckpt` to <output_dir>/best (atomically replaced)."""
    best = output_dir / "best"
    tmp = output_dir / "best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ckpt.iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy2(f, tmp / f.name)
    old = output_dir / "best.old"
    shutil.rmtree(old, ignore_errors=True)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)
    return best


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
