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
from collections import Counter
from collections.abc import Sequence

import numpy as np

from albert_exp.labels import IGNORE


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
      unseen phrase; unseen_mentions: their count (the seen / unseen figures only where there are such mentions).
    """
    from albert_exp.words import span_word_tags, word_spans

    c = Counter()  # counts over all texts
    for text, g, p in zip(texts, gold, pred, strict=True):
        g, p = set(map(tuple, g)), set(map(tuple, p))
        c.update(tp=len(g & p), pred=len(p), gold=len(g))
        c["overlap"] += sum(any(ps < ge and pe > gs for ps, pe in p) for gs, ge in g)
        if not g:
            c.update(negatives=1, flagged=int(bool(p)))
        words = word_spans(text)
        gw, pw = span_word_tags(words, sorted(g)), span_word_tags(words, sorted(p))
        c.update(words_right=sum(a == b for a, b in zip(gw, pw, strict=True)), words=len(words), word_pos=sum(gw))
        if train_words is not None:
            _count_seen_unseen(text, g, p, train_words, c)
    precision, recall = _ratio(c["tp"], c["pred"]), _ratio(c["tp"], c["gold"])
    out = {
        "phrase_precision": precision,
        "phrase_recall": recall,
        "phrase_f1": _f1(precision, recall),
        "overlap_recall": _ratio(c["overlap"], c["gold"]),
        "negative_fp_rate": _ratio(c["flagged"], c["negatives"]),
        "word_accuracy": _ratio(c["words_right"], c["words"]),
        "all_negative_word_accuracy": _ratio(c["words"] - c["word_pos"], c["words"]),
    }
    if train_words is not None:
        out["unseen_mentions"] = float(c["unseen"])
        # a recall over no mention is no figure (a 0 would read as a failure): left out, shown as "–"
        if c["seen"]:
            out["seen_phrase_recall"] = _ratio(c["seen_tp"], c["seen"])
        if c["unseen"]:
            u_recall, u_precision = _ratio(c["unseen_tp"], c["unseen"]), _ratio(c["unseen_tp_pred"], c["unseen_pred"])
            out |= {
                "unseen_phrase_recall": u_recall,
                "unseen_phrase_precision": u_precision,
                "unseen_phrase_f1": _f1(u_precision, u_recall),
            }
    return out


def _count_seen_unseen(text: str, g: set, p: set, train_words: set[str], c: Counter) -> None:
    """A gold mention is unseen when one of its words is in no training phrase; precision on unseen mentions
    counts every prediction in the texts that have one."""
    new = {s for s in g if phrase_words([text[s[0] : s[1]]]) - train_words}
    for s in g:
        bucket = "unseen" if s in new else "seen"
        c.update({bucket: 1, f"{bucket}_tp": int(s in p)})
    if new:
        c.update(unseen_pred=len(p), unseen_tp_pred=len(g & p))


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
