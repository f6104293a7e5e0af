"""No silent truncation: a text longer than max_seq_length is tagged in overlapping windows, merged back.

Each text is tokenised whole (no special tokens), then cut into windows of `max_seq_length - 2` tokens
(`[CLS] ... [SEP]` around each); consecutive windows share `stride` tokens (Hugging Face's `stride` for
overflowing tokens means the same). The last window is aligned to the end of the text, so every token is in
some window. Merging: a token in several windows takes its score from the window where it has the most
context on its shorter side (the usual rule for question answering over long documents).

Used alike by training (windows are the training rows), evaluation (metrics over whole texts: every gold
mention counts) and the phrase extractor (predict, serving).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from albert_exp.labels import IGNORE


def window_bounds(n_tokens: int, width: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) token ranges covering n_tokens with windows of `width` that overlap by `stride`."""
    if not 0 <= stride < width:
        raise ValueError(f"stride {stride} must be in [0, {width})")
    if n_tokens <= width:
        return [(0, n_tokens)]
    step = width - stride
    starts = list(range(0, n_tokens - width, step)) + [n_tokens - width]
    return [(a, a + width) for a in starts]


def merge(n_tokens: int, bounds: Sequence[tuple[int, int]], scores: Sequence[Sequence[float]]) -> list[float]:
    """One score per token of the text from the scores of its windows (see the module docstring)."""
    out = [0.0] * n_tokens
    best = [-1] * n_tokens
    for (a, b), window in zip(bounds, scores, strict=True):
        for i in range(a, b):
            context = min(i - a, b - 1 - i)
            if context > best[i]:
                best[i], out[i] = context, window[i - a]
    return out


def tokenize(tokenizer: Any, texts: Sequence[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Token ids and character offsets of whole texts, without special tokens."""
    if not texts:
        return [], []
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [[tuple(map(int, o)) for o in offs] for offs in enc["offset_mapping"]]


def scores(
    model: Any, windows: Sequence[Sequence[int]], pad_id: int, batch_size: int, labels: Sequence[Sequence[int]] = ()
) -> tuple[list[list[float]], float, int]:
    """P(phrase) of each window's tokens (special tokens dropped), and, given labels, the summed token
    cross-entropy and the number of labelled tokens."""
    import torch

    model.eval()
    out: list[list[float]] = []
    loss_sum, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            chunk = [list(w) for w in windows[i : i + batch_size]]
            batch = collate(chunk, [list(y) for y in labels[i : i + batch_size]] if labels else None, pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            if labels:
                y = batch["labels"]
                k = int((y != IGNORE).sum())
                loss = torch.nn.functional.cross_entropy(logits.view(-1, 2), y.view(-1), ignore_index=IGNORE)
                loss_sum += loss.item() * k
                n += k
            p = torch.softmax(logits.float(), dim=-1)[..., 1]
            out.extend(p[j, 1 : len(w) - 1].tolist() for j, w in enumerate(chunk))
    return out, loss_sum, n


def tag_texts(
    texts: Sequence[str],
    model: Any,
    tokenizer: Any,
    *,
    max_seq_length: int,
    stride: int,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Per text: token ids, offsets and merged P(phrase) per token, and the number of windows it took."""
    ids, offsets = tokenize(tokenizer, texts)
    width = max_seq_length - 2
    windows, owner, all_bounds = [], [], []
    for t, x in enumerate(ids):
        bounds = window_bounds(len(x), width, stride)
        all_bounds.append(bounds)
        for a, b in bounds:
            windows.append([tokenizer.cls_token_id, *x[a:b], tokenizer.sep_token_id])
            owner.append(t)
    probs, _, _ = scores(model, windows, tokenizer.pad_token_id, batch_size)
    out, k = [], 0
    for t, x in enumerate(ids):
        n = len(all_bounds[t])
        out.append(
            {
                "ids": x,
                "offsets": offsets[t],
                "scores": merge(len(x), all_bounds[t], probs[k : k + n]),
                "windows": n,
            }
        )
        k += n
    return out


def evaluate(
    model: Any, data: Any, batch_size: int, pad_id: int, threshold: float = 0.5
) -> tuple[dict[str, float], list[list[tuple[int, int]]]]:
    """Metrics of a model on an Encoded split, over whole texts: the mean token loss over the windows, the
    recipe's token accuracy on merged tokens, and the phrase metrics of albert_exp.metrics.span_metrics on
    word-level spans (every gold mention counts). Returns the metrics and the predicted spans per text."""
    from albert_exp.metrics import span_metrics, token_metrics
    from albert_exp.words import extract_spans

    probs, loss_sum, n = scores(model, data.input_ids, pad_id, batch_size, data.labels)
    token_preds, pred_spans = [], []
    k = 0
    for text, offsets, bounds in zip(data.texts, data.offsets, data.bounds, strict=True):
        merged = merge(len(offsets), bounds, probs[k : k + len(bounds)])
        k += len(bounds)
        token_preds.append([int(p >= threshold) for p in merged])
        pred_spans.append(extract_spans(text, offsets, merged, strategy=data.aggregation, threshold=threshold)[2])
    tokens = token_metrics(data.token_labels, token_preds)
    metrics = {
        "loss": loss_sum / max(n, 1),
        "token_accuracy": tokens["token_accuracy"],
        "all_negative_token_accuracy": tokens["all_negative_token_accuracy"],
        **span_metrics(data.texts, data.spans, pred_spans, data.train_words),
    }
    return metrics, pred_spans


def collate(input_ids: list[list[int]], labels: list[list[int]] | None, pad_id: int) -> dict[str, Any]:
    """Pad a batch to its longest sequence (cheaper than padding everything to max_seq_length)."""
    import torch

    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for i, x in enumerate(input_ids):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        lab = torch.full((len(labels), width), IGNORE, dtype=torch.long)
        for i, y in enumerate(labels):
            lab[i, : len(y)] = torch.tensor(y)
        batch["labels"] = lab
    return batch
