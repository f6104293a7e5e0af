"""The word view of a text: predictions are aggregated from tokens to words before spans are formed.

A *word* is a maximal run of letters, digits and combining marks; every other non-space character
(punctuation, an emoji) is a word of its own, and so is every character of a script written without spaces
(CJK, Thai, Lao, Khmer, Myanmar): there, spans stay character-level. Gold phrases are matched at the same
boundaries (albert_exp.labels), so a gold span is always a run of whole words.

Aggregation follows Hugging Face's token-classification pipeline (`aggregation_strategy`): a word's phrase
probability is that of its `first` token, the `average` over its tokens, or their `max`. A word is tagged
when that probability reaches the threshold; a span is a run of tagged words separated by nothing but
whitespace, so a predicted span never starts or ends inside a word, and "lamb curry, duck soup" gives two.
"""

from __future__ import annotations

from collections.abc import Sequence

from albert_exp.labels import _word_char

Span = tuple[int, int]
STRATEGIES = ("first", "average", "max")


_SPACE, _WORD, _OTHER = 0, 1, 2
_KINDS: dict[str, int] = {}  # character -> kind, filled as characters are met (texts reuse few characters)


def _kind(ch: str) -> int:
    k = _KINDS.get(ch)
    if k is None:
        k = _KINDS[ch] = _SPACE if ch.isspace() else _WORD if _word_char(ch) else _OTHER
    return k


def word_spans(text: str) -> list[Span]:
    """(start, end) character offsets of the words of `text`, in order."""
    out: list[Span] = []
    start = -1
    for i, ch in enumerate(text):
        k = _KINDS.get(ch)
        if k is None:
            k = _kind(ch)
        if k == _WORD:
            if start < 0:
                start = i
            continue
        if start >= 0:
            out.append((start, i))
            start = -1
        if k == _OTHER:  # punctuation, symbols, emoji, and each character of a script without spaces
            out.append((i, i + 1))
    if start >= 0:
        out.append((start, len(text)))
    return out


def word_scores(
    words: Sequence[Span], offsets: Sequence[Span], scores: Sequence[float], strategy: str = "average"
) -> list[float]:
    """Each word's phrase probability from the scores of the tokens overlapping it (0.0 for a word no token
    covers). Tokens must be in text order and without special tokens."""
    if strategy not in STRATEGIES:
        raise ValueError(f"aggregation strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    out: list[float] = []
    k = 0
    for ws, we in words:
        while k < len(offsets) and offsets[k][1] <= ws:  # tokens wholly before this word
            k += 1
        mine = []
        j = k
        while j < len(offsets) and offsets[j][0] < we:
            s, e = offsets[j]
            if e > s and s < we and e > ws:
                mine.append(scores[j])
            j += 1
        if not mine:
            out.append(0.0)
        elif strategy == "first":
            out.append(mine[0])
        elif strategy == "max":
            out.append(max(mine))
        else:
            out.append(sum(mine) / len(mine))
    return out


def tags_to_spans(text: str, words: Sequence[Span], tags: Sequence[int]) -> list[Span]:
    """Character spans of runs of tagged words that only whitespace separates."""
    spans: list[Span] = []
    prev_tagged = False
    for (s, e), t in zip(words, tags, strict=True):
        if t:
            if prev_tagged and not text[spans[-1][1] : s].strip():
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
        prev_tagged = bool(t)
    return spans


def span_word_tags(words: Sequence[Span], spans: Sequence[Span]) -> list[int]:
    """1 for a word inside one of `spans`, else 0 (the word view of gold or predicted spans)."""
    return [int(any(ps <= s and e <= pe for ps, pe in spans)) for s, e in words]


def extract_spans(
    text: str,
    offsets: Sequence[Span],
    scores: Sequence[float],
    *,
    strategy: str = "average",
    threshold: float = 0.5,
) -> tuple[list[Span], list[float], list[Span]]:
    """Word spans, word probabilities and phrase spans of one text from its tokens' scores."""
    words = word_spans(text)
    probs = word_scores(words, offsets, scores, strategy)
    return words, probs, tags_to_spans(text, words, [int(p >= threshold) for p in probs])
