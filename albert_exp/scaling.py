"""Batch-size scaling rule for ALBERT pretraining, as the recipe applied it.

ALBERT's reference run: batch 4096, 125,000 steps, 3,125 warm-up steps, lr 0.00176. For another batch B the
recipe scales linearly with k = B / 4096: steps / k, warm-up / k, lr * k. Batch 512 gives 1,000,000 steps,
25,000 warm-up steps and lr 0.00022 — exactly the recipe's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

RULE = "linear: steps and warm-up scale with 1/k, learning rate with k, where k = batch / reference_batch"


@dataclass(frozen=True)
class Scaled:
    batch_size: int
    num_train_steps: int
    num_warmup_steps: int
    learning_rate: float
    rule: str = RULE

    def as_params(self, prefix: str = "derived.") -> dict[str, object]:
        return {f"{prefix}{k}": v for k, v in self.__dict__.items()}


def scale_for_batch(
    batch_size: int,
    *,
    reference_batch_size: int = 4096,
    reference_steps: int = 125_000,
    reference_warmup_steps: int = 3_125,
    reference_learning_rate: float = 0.00176,
) -> Scaled:
    if batch_size < 1 or reference_batch_size < 1:
        raise ValueError("batch sizes must be >= 1")
    k = batch_size / reference_batch_size
    return Scaled(
        batch_size=batch_size,
        num_train_steps=max(1, round(reference_steps / k)),
        num_warmup_steps=round(reference_warmup_steps / k),
        # round to 12 significant digits so 0.00176 / 8 prints as 0.00022, not 0.00021999999999999998
        learning_rate=float(f"{reference_learning_rate * k:.12g}"),
    )
