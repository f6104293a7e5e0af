"""Optimisation as google's ALBERT does it, and plateau detection.

* LAMB from pytorch-optimizer (maintained; not hand-written) configured like google's lamb_optimizer.py:
  beta1 0.9, beta2 0.999, eps 1e-6, no bias correction, weight decay 0.01 *added to the update* (not
  decoupled), LayerNorm weights and biases excluded from weight decay and from the trust ratio
  (google's exclude_from_layer_adaptation defaults to the weight-decay exclusions).
* Gradients clipped to global norm 1.0 before the update (optimization.py: clip_by_global_norm).
* lr(step) = init_lr * step / warmup during warm-up, then init_lr * (1 - step / total) ** power
  (tf.train.polynomial_decay to 0, as optimization.py). The lr is a LambdaLR so its state checkpoints.
"""

from __future__ import annotations

import torch

NO_DECAY = ("LayerNorm", "layer_norm", "bias")  # google's exclude_from_weight_decay patterns


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if any(k in name for k in NO_DECAY) else decay).append(p)
    # `adam=True` gives those parameters a trust ratio of 1, i.e. no layer adaptation.
    return [
        {"params": decay, "weight_decay": weight_decay, "adam": False},
        {"params": no_decay, "weight_decay": 0.0, "adam": True},
    ]


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    from pytorch_optimizer import Lamb

    # weight_decouple=False: google adds wd * w to the Adam update before the trust ratio.
    # max_grad_norm=0 / pre_norm=False: clipping is done by the loop (clip_grad_norm_), as google does.
    opt = Lamb(
        param_groups(model, weight_decay),
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-6,
        weight_decouple=False,
        max_grad_norm=0.0,
        pre_norm=False,
    )
    # pytorch-optimizer clamps the weight norm in the trust ratio at 10; google's LAMB does not (the
    # word-embedding matrix alone has a norm of ~40 at init for a 30k vocabulary).
    opt.clamp = float("inf")
    return opt


def lr_factor(step: int, warmup: int, total: int, power: float = 1.0) -> float:
    """Multiplier of init_lr at optimiser step `step` (0-based, as global_step in TF)."""
    decayed = (1.0 - min(step, total) / total) ** power
    if warmup and step < warmup:
        return step / warmup
    return decayed


def make_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int, power: float = 1.0):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, power))


class Plateau:
    """Stop when the smoothed (EMA) training loss improved by less than `min_improvement` (relative) over
    the last `window` steps. State is plain numbers, saved in checkpoints."""

    def __init__(self, window: int, min_improvement: float, smoothing: float):
        self.window, self.min_improvement, self.smoothing = window, min_improvement, smoothing
        self.ema: float | None = None
        self.history: dict[int, float] = {}  # step -> EMA at that step (kept for one window)

    def update(self, step: int, loss: float) -> str | None:
        """Feed the loss of optimiser step `step`; returns the stop reason or None."""
        self.ema = loss if self.ema is None else self.smoothing * self.ema + (1 - self.smoothing) * loss
        if not self.window:
            return None
        self.history[step] = self.ema
        past = step - self.window
        for s in [s for s in self.history if s < past]:
            del self.history[s]
        if past in self.history:
            then = self.history[past]
            gain = (then - self.ema) / abs(then) if then else 0.0
            if gain < self.min_improvement:
                return (
                    f"plateau: smoothed loss {self.ema:.4f} at step {step} vs {then:.4f} at step {past}, "
                    f"a relative improvement of {gain:.2%} < {self.min_improvement:.2%} over {self.window} steps"
                )
        return None

    def state_dict(self) -> dict:
        return {"ema": self.ema, "history": {str(k): v for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"]
        self.history = {int(k): v for k, v in state["history"].items()}
