"""Token-classification metrics: plain functions over per-sample label/prediction sequences.

Positions labelled IGNORE (-100: special and padding tokens) are excluded everywhere.

- token_accuracy: correctly classified tokens / all real tokens, over all samples (the recipe's definition;
  it is dominated by the many 0-tokens, so the all-negative baseline is reported beside it).
- phrase precision/recall/F1: exact match of maximal runs of 1-tokens (a predicted phrase counts only if it
  starts and ends on the same tokens as a gold one), micro-averaged over all samples.
- negative_fp_rate: share of negative samples (no gold 1-token) in which any token is predicted 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE = -100


def token_runs(tags: Sequence[int], mask: Sequence[bool]) -> set[tuple[int, int]]:
    """Maximal runs of 1s among the real positions, as (first, last) token indices."""
    runs: set[tuple[int, int]] = set()
    start = None
    for i, (t, real) in enumerate(zip(tags, mask, strict=True)):
        if real and t == 1:
            start = i if start is None else start
        elif start is not None:
            runs.add((start, i - 1))
            start = None
    if start is not None:
        runs.add((start, len(tags) - 1))
    return runs


def token_metrics(labels: Sequence[Sequence[int]], preds: Sequence[Sequence[int]]) -> dict[str, float]:
    correct = total = positives = 0
    tp = n_pred = n_gold = 0
    negatives = negatives_flagged = 0
    for lab, pred in zip(labels, preds, strict=True):
        lab, pred = np.asarray(lab), np.asarray(pred)
        mask = lab != IGNORE
        correct += int((lab[mask] == pred[mask]).sum())
        total += int(mask.sum())
        positives += int((lab[mask] == 1).sum())
        gold_runs, pred_runs = token_runs(lab, mask), token_runs(pred, mask)
        tp += len(gold_runs & pred_runs)
        n_pred += len(pred_runs)
        n_gold += len(gold_runs)
        if not gold_runs:
            negatives += 1
            negatives_flagged += int(bool(pred_runs))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "token_accuracy": correct / total if total else 0.0,
        "all_negative_token_accuracy": (total - positives) / total if total else 0.0,
        "phrase_precision": precision,
        "phrase_recall": recall,
        "phrase_f1": f1,
        "negative_fp_rate": negatives_flagged / negatives if negatives else 0.0,
    }
