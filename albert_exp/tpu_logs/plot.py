"""The loss curve of a TPU run: raw points, a smoothed line, restarts marked; throughput below."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SMOOTH_POINTS = 50  # rolling-median window: about 5,000 steps when the log prints every 100


def loss_curve(table: Any, restarts: list[dict], path: str | Path) -> bool:
    """Write a PNG; returns False when there is no loss to draw."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    loss = table[table["metric"] == "train/loss"].sort_values("step")
    if loss.empty:
        return False
    rate = table[table["metric"] == "train/global_step_per_s"].sort_values("step")
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=(3, 1))
    ax.plot(loss["step"], loss["value"], lw=0.5, alpha=0.35, color="tab:blue", label="train/loss (raw)")
    window = max(1, min(SMOOTH_POINTS, len(loss) // 10))
    smooth = loss["value"].rolling(window, center=True, min_periods=1).median()
    ax.plot(loss["step"], smooth, lw=1.6, color="tab:blue", label=f"rolling median ({window} points)")
    evals = table[table["metric"] == "eval/loss"]
    if len(evals):
        ax.plot(evals["step"], evals["value"], "o", ms=3, color="tab:orange", label="eval/loss")
    for n, r in enumerate(restarts):
        for a in (ax, ax2):
            a.axvline(r["step"], color="tab:red", ls="--", lw=0.8, label="restart" if n == 0 and a is ax else None)
    ax.set_ylabel("loss")
    ax.set_title("TPU pretraining (from console logs)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if len(rate):
        ax2.plot(rate["step"], rate["value"], lw=0.6, color="tab:green")
    ax2.set_ylabel("steps/s")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
