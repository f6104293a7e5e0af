"""Token-classification metrics: plain functions over per-sample label/prediction sequences.

Positions labelled IGNORE (-100: special and padding tokens) are excluded everywhere.

- token_accuracy: correctly classified tokens / all real tokens, over all samples (the recipe's definition;
  it is dominated by the many 0-tokens, so the all-negative baseline is reported beside it).
- phrase precision/recall/F1: exact match of maximal runs of 1-tokens (a predicted phrase counts only if it
  starts and ends on the same tokens as a gold one), micro-averaged over all samples.
- negative_fp_rate: share of negative samples (no gold 1-token) in which any token is predicted 1.

span_metrics scores character spans in the word view (albert_exp.words): what `finetune` reports as phrase
metrics (over whole texts, every gold mention counted), and what the CRF baseline is scored with.
"""

from __future__ import annotations

import re
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


def phrase_words(phrases: Sequence[str]) -> set[str]:
    """The lower-cased words of phrases: the training vocabulary of dish words for seen/unseen metrics."""
    return {w for p in phrases for w in re.findall(r"\w+", p.lower())}


def span_metrics(
    texts: Sequence[str],
    gold: Sequence[Sequence[tuple[int, int]]],
    pred: Sequence[Sequence[tuple[int, int]]],
    train_words: set[str] | None = None,
) -> dict[str, float]:
    """Phrase metrics on character spans (exact match), in the word view; seen/unseen split when the training
    phrases' words are given: a gold mention is *unseen* when one of its words is in no training phrase.

    - phrase_precision|recall|f1, negative_fp_rate: as in token_metrics, on spans.
    - overlap_recall: gold mentions that some predicted span overlaps (found, maybe with wrong boundaries).
    - word_accuracy, all_negative_word_accuracy: words (albert_exp.words) inside / outside spans.
    - seen_phrase_recall, unseen_phrase_recall, and unseen_phrase_precision|f1 over the texts that mention an
      unseen phrase; unseen_mentions: their count.
    """
    from albert_exp.words import span_word_tags, word_spans

    tp = n_pred = n_gold = overlap = 0
    negatives = flagged = words_right = n_words = word_pos = 0
    seen = {"tp": 0, "n": 0}
    unseen = {"tp": 0, "n": 0, "pred": 0, "tp_pred": 0}
    for text, g, p in zip(texts, gold, pred, strict=True):
        g, p = set(map(tuple, g)), set(map(tuple, p))
        tp += len(g & p)
        n_pred += len(p)
        n_gold += len(g)
        overlap += sum(any(ps < ge and pe > gs for ps, pe in p) for gs, ge in g)
        if not g:
            negatives += 1
            flagged += int(bool(p))
        words = word_spans(text)
        gw, pw = span_word_tags(words, sorted(g)), span_word_tags(words, sorted(p))
        words_right += sum(a == b for a, b in zip(gw, pw, strict=True))
        n_words += len(words)
        word_pos += sum(gw)
        if train_words is None:
            continue
        new = {s for s in g if phrase_words([text[s[0] : s[1]]]) - train_words}
        for s in g:
            bucket = unseen if s in new else seen
            bucket["n"] += 1
            bucket["tp"] += int(s in p)
        if new:
            unseen["pred"] += len(p)
            unseen["tp_pred"] += len(g & p)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    out = {
        "phrase_precision": precision,
        "phrase_recall": recall,
        "phrase_f1": _f1(precision, recall),
        "overlap_recall": overlap / n_gold if n_gold else 0.0,
        "negative_fp_rate": flagged / negatives if negatives else 0.0,
        "word_accuracy": words_right / n_words if n_words else 0.0,
        "all_negative_word_accuracy": (n_words - word_pos) / n_words if n_words else 0.0,
    }
    if train_words is not None:
        u_recall = unseen["tp"] / unseen["n"] if unseen["n"] else 0.0
        u_precision = unseen["tp_pred"] / unseen["pred"] if unseen["pred"] else 0.0
        out |= {
            "seen_phrase_recall": seen["tp"] / seen["n"] if seen["n"] else 0.0,
            "unseen_phrase_recall": u_recall,
            "unseen_phrase_precision": u_precision,
            "unseen_phrase_f1": _f1(u_precision, u_recall),
            "unseen_mentions": float(unseen["n"]),
        }
    return out


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
